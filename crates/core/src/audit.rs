//! Audit records: one structured record per decided request, chained so that a removed,
//! reordered or altered record shows.
//!
//! Each VM is a *producer* (a name unique to the proxy, the VM's start and its number among the
//! proxy's VMs). Its records carry `seq` (1, 2, 3, ... without gaps), `prev` (the previous
//! record's `hash`; [`GENESIS`] for the first) and `hash`: SHA-256 over `prev` and the record's
//! canonical form (compact JSON with sorted keys, without `hash`). [`verify`] recomputes every
//! link. What a chain cannot show is its own tail cut off: records removed after the last one a
//! verifier holds (a shipped copy of the newest `seq` closes that gap).
//!
//! The record leaves through Envoy's access log: the runtime puts it in filter state
//! ([`AUDIT_PROPERTY`]) when the request ends, and an access log prints
//! `%FILTER_STATE(wasm.meshward.audit:PLAIN)%` (`meshward render envoy` writes that log).

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{parse_json, ConfigError};
use crate::json::Document;

pub mod signing;

use signing::{Signer, SigningConfig, VerifyingKey};

/// Filter-state key holding the request's record (Envoy: `wasm.meshward.audit`).
pub const AUDIT_PROPERTY: &str = "meshward.audit";

/// `prev` of a producer's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which requests get a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Records {
    /// Requests that may change something: every method but GET, HEAD, OPTIONS and TRACE.
    #[default]
    Writes,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub records: Records,
    /// Sign records ([`signing`]): the key and how often.
    pub signing: Option<SigningConfig>,
}

impl AuditConfig {
    /// The settings as written (a signing key in the VM's environment is read by
    /// [`SigningConfig::signer`] where it runs).
    pub fn parse(json: &[u8]) -> Result<AuditConfig, ConfigError> {
        let config: AuditConfig = parse_json(json)?;
        if let Some(signing) = &config.signing {
            signing.check()?;
        }
        Ok(config)
    }

    /// Whether a request with this method gets a record.
    pub fn covers(&self, method: &str) -> bool {
        self.records == Records::All || !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
    }
}

/// Where a producer's chain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    producer: String,
    seq: u64,
    hash: String,
    /// Records sealed since the last signed one, and when that was (Unix ms).
    unsigned: u64,
    signed_ms: u64,
}

thread_local! {
    /// This VM's chain (a VM is one thread; reconfiguring it keeps the chain going).
    static CHAIN: RefCell<Option<Link>> = const { RefCell::new(None) };
}

/// The hash that seals a record: SHA-256 of its canonical form without `hash` (`prev` is part
/// of it, which links the chain).
pub fn seal_hash(record: &Map<String, Value>) -> String {
    let mut unsealed = record.clone();
    unsealed.remove("hash");
    hex_digest(&canonical(&Value::Object(unsealed)))
}

fn hex_digest(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

/// Compact JSON with the keys of every object sorted (whatever order a pipeline kept them in),
/// written in one buffer: what the hash covers.
fn canonical(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (key, member)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // Writing JSON into memory cannot fail.
                    let _ = serde_json::to_writer(&mut *out, key);
                    out.push(b':');
                    write(member, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => {
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
    let mut out = Vec::with_capacity(1024);
    write(value, &mut out);
    out
}

/// Adds `producer`, `seq` and `prev` to a record of this VM, signs it when due (`signer`: the
/// first record, then every `every` records or `seconds`, `now_ms` being the time), seals it
/// with `hash` and advances the chain: the record as one JSON line. `producer` names the chain
/// on its first record (later records keep the VM's first name).
pub fn seal(mut record: Map<String, Value>, producer: impl FnOnce() -> String, signer: Option<&Signer>, now_ms: u64) -> String {
    CHAIN.with(|chain| {
        let mut chain = chain.borrow_mut();
        let link = chain.get_or_insert_with(|| Link { producer: producer(), seq: 0, hash: GENESIS.to_string(), unsigned: 0, signed_ms: 0 });
        record.insert("producer".into(), Value::String(link.producer.clone()));
        record.insert("seq".into(), Value::from(link.seq + 1));
        record.insert("prev".into(), Value::String(link.hash.clone()));
        record.remove("hash");
        record.remove("signature");
        if let Some(signer) = signer {
            let due = link.seq == 0 || link.unsigned + 1 >= signer.every || now_ms.saturating_sub(link.signed_ms) >= signer.seconds * 1000;
            if due {
                signer.sign(&mut record);
                (link.unsigned, link.signed_ms) = (0, now_ms);
            } else {
                link.unsigned += 1;
            }
        }
        let mut line = canonical(&Value::Object(record));
        let hash = hex_digest(&line);
        // `{...}` → `{...,"hash":"<hex>"}`: the line is the canonical form with its seal.
        line.pop();
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(b"\"}");
        link.seq += 1;
        link.hash = hash;
        String::from_utf8(line).unwrap_or_default()
    })
}

/// What [`verify`] found wrong, at a record (1-based line of its file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// What [`verify`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub records: usize,
    /// Each producer with the last `seq` read from it.
    pub producers: Vec<(String, u64)>,
    pub findings: Vec<Finding>,
    /// With keys: producers whose records read begin after `#1` (a rotated file read alone),
    /// with the first `seq` read; the signatures anchor them.
    pub starts: Vec<(String, u64)>,
    /// With keys: records after each producer's last signature, not vouched for yet (fewer
    /// than the producer's `every`: the next signed record will cover them).
    pub unsigned_tail: Vec<(String, u64)>,
}

/// One producer's chain as read so far.
struct Read {
    producer: String,
    seq: u64,
    hash: String,
    /// Where its first record was read (file, line).
    first: (String, usize),
    /// The `every` of its last valid signature, and the unsigned records read since.
    every: Option<u64>,
    unsigned: u64,
}

/// Checks the records of some files (lines of JSON; blank lines and lines that are not records
/// are findings too, since a record can be cut into them). Records of several producers may be
/// interleaved and spread over files read in order (a rotated log: oldest first).
///
/// With `keys` ([`signing`]): every signature must verify with one of them, every producer must
/// have a valid one, and no run of unsigned records may be as long as the producer's `every`
/// (signatures removed); a producer's records may then begin after `#1` (one rotated file).
pub fn verify(files: &[(String, String)], keys: &[VerifyingKey]) -> Verified {
    let mut out = Verified::default();
    let mut chains: Vec<Read> = Vec::new();
    for (file, text) in files {
        for (i, line) in text.lines().enumerate() {
            let at = |message: String| Finding { file: file.clone(), line: i + 1, message };
            if line.trim().is_empty() {
                continue;
            }
            // Read strictly: a key given twice (`"status":200,` added before `"status":403`)
            // is read as either value by different readers, so it is tampering, not a record.
            let record = match crate::json::read(line.as_bytes(), crate::json::MAX_DEPTH) {
                Ok(Document { value: Value::Object(record), .. }) => record,
                Err(crate::json::JsonError::Ambiguous(ambiguity)) => {
                    out.findings.push(at(format!("not one reading: {} (altered)", ambiguity.describe().trim_start_matches("the body "))));
                    continue;
                }
                _ => {
                    out.findings.push(at("not a JSON record (altered, or cut)".into()));
                    continue;
                }
            };
            let field = |name: &str| record.get(name).and_then(Value::as_str);
            let (Some(producer), Some(seq), Some(prev), Some(hash)) =
                (field("producer"), record.get("seq").and_then(Value::as_u64), field("prev"), field("hash"))
            else {
                out.findings.push(at("lacks producer, seq, prev or hash".into()));
                continue;
            };
            out.records += 1;
            if seal_hash(&record) != hash {
                out.findings.push(at(format!("{producer} #{seq}: altered (its content does not match its hash)")));
            }
            let index = match chains.iter().position(|c| c.producer == producer) {
                Some(index) => index,
                None => {
                    // Read alone, a rotated file begins where the one before it ended.
                    let (seq0, hash0) = if keys.is_empty() || seq == 1 {
                        (0, GENESIS.to_string())
                    } else {
                        out.starts.push((producer.to_string(), seq));
                        (seq - 1, prev.to_string())
                    };
                    let first = (file.clone(), i + 1);
                    chains.push(Read { producer: producer.to_string(), seq: seq0, hash: hash0, first, every: None, unsigned: 0 });
                    chains.len() - 1
                }
            };
            let chain = &mut chains[index];
            let expected_seq = chain.seq + 1;
            if seq != expected_seq {
                let message = if seq > expected_seq {
                    format!("{producer} #{seq}: {} record(s) before it are missing (expected #{expected_seq})", seq - expected_seq)
                } else {
                    format!("{producer} #{seq}: out of order or repeated (expected #{expected_seq})")
                };
                out.findings.push(at(message));
            } else if prev != chain.hash {
                out.findings.push(at(format!("{producer} #{seq}: does not follow the record before it (prev differs)")));
            }
            // A record from the past does not move the chain back: what follows is checked
            // against the newest record read.
            if seq < expected_seq {
                continue;
            }
            (chain.seq, chain.hash) = (seq, hash.to_string());
            if keys.is_empty() {
                continue;
            }
            match signing::check(&record, keys) {
                Some(Ok(every)) => (chain.every, chain.unsigned) = (Some(every), 0),
                signature => {
                    if let Some(Err(why)) = signature {
                        out.findings.push(at(format!("{producer} #{seq}: {why}")));
                    }
                    chain.unsigned += 1;
                    if chain.every == Some(chain.unsigned) {
                        let every = chain.unsigned;
                        out.findings.push(at(format!(
                            "{producer} #{seq}: {every} records in a row without a valid signature (this producer signs at least every {every}): signatures removed"
                        )));
                    }
                }
            }
        }
    }
    for chain in &chains {
        if keys.is_empty() {
            continue;
        }
        match chain.every {
            None => out.findings.push(Finding {
                file: chain.first.0.clone(),
                line: chain.first.1,
                message: format!("{}: no record signed with a key given to verify (an unsigned or invented producer)", chain.producer),
            }),
            Some(_) if chain.unsigned > 0 => out.unsigned_tail.push((chain.producer.clone(), chain.unsigned)),
            Some(_) => {}
        }
    }
    out.producers = chains.into_iter().map(|c| (c.producer, c.seq)).collect();
    out
}

/// An RFC 3339 UTC time with milliseconds from Unix milliseconds (`2026-12-03T00:19:43.120Z`).
pub fn rfc3339(unix_ms: u64) -> String {
    let (days, ms) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
    // Civil from days (H. Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(n: u64) -> Map<String, Value> {
        json!({"method": "POST", "path": format!("/orders/{n}"), "status": 201, "stages": [{"stage": "jwt", "decision": "allowed"}]})
            .as_object()
            .cloned()
            .unwrap()
    }

    /// Five sealed records of one fresh chain, as lines.
    fn chain_of_five(producer: &str) -> Vec<String> {
        CHAIN.with(|c| *c.borrow_mut() = None);
        (1..=5).map(|n| seal(record(n), || producer.to_string(), None, 0)).collect()
    }

    fn check(lines: &[String]) -> Vec<String> {
        verify(&[("audit.log".into(), lines.join("\n"))], &[]).findings.into_iter().map(|f| format!("{}: {}", f.line, f.message)).collect()
    }

    #[test]
    fn an_intact_chain_verifies_in_any_key_order() {
        let lines = chain_of_five("p1");
        assert_eq!(check(&lines), Vec::<String>::new());
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!((first["seq"].as_u64(), first["prev"].as_str()), (Some(1), Some(GENESIS)));
        // A pipeline that re-serialises records (other key order, spaces) changes nothing.
        let reordered: Vec<String> = lines
            .iter()
            .map(|l| {
                let v: Map<String, Value> = serde_json::from_str(l).unwrap();
                let mut pairs: Vec<(String, Value)> = v.into_iter().collect();
                pairs.reverse();
                format!("{{ {} }}", pairs.iter().map(|(k, v)| format!("{}: {}", Value::String(k.clone()), v)).collect::<Vec<_>>().join(", "))
            })
            .collect();
        assert_eq!(check(&reordered), Vec::<String>::new());
        let verified = verify(&[("a".into(), lines.join("\n"))], &[]);
        assert_eq!((verified.records, verified.producers), (5, vec![("p1".to_string(), 5)]));
    }

    #[test]
    fn each_tampering_is_found_where_it_is() {
        let lines = chain_of_five("p1");
        // (what was done, the lines, the findings)
        let altered = lines[2].replace("201", "403");
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let resealed = {
            // Altered and re-hashed by someone without the rest of the chain: the next link breaks.
            let mut v: Map<String, Value> = serde_json::from_str(&lines[2]).unwrap();
            v.insert("status".into(), json!(403));
            let hash = seal_hash(&v);
            v.insert("hash".into(), Value::String(hash));
            Value::Object(v).to_string()
        };
        let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
            ("removed", [&lines[..2], &lines[3..]].concat(), vec!["3: p1 #4: 1 record(s) before it are missing (expected #3)"]),
            ("altered", [&lines[..2], &[altered], &lines[3..]].concat(), vec!["3: p1 #3: altered (its content does not match its hash)"]),
            ("swapped", swapped, vec!["2: p1 #3: 1 record(s) before it are missing (expected #2)", "3: p1 #2: out of order or repeated (expected #4)"]),
            ("re-hashed", [&lines[..2], &[resealed], &lines[3..]].concat(), vec!["4: p1 #4: does not follow the record before it (prev differs)"]),
            ("cut", [&lines[..2], &[lines[2][..40].to_string()], &lines[3..]].concat(), vec!["3: not a JSON record (altered, or cut)", "4: p1 #4: 1 record(s) before it are missing (expected #3)"]),
            (
                "a key given twice (the reader of the last value sees 200)",
                [&lines[..2], &[lines[2].replacen('{', "{\"status\":200,", 1)], &lines[3..]].concat(),
                vec!["3: not one reading: an object has the same member twice (altered)", "4: p1 #4: 1 record(s) before it are missing (expected #3)"],
            ),
            ("first removed", lines[1..].to_vec(), vec!["1: p1 #2: 1 record(s) before it are missing (expected #1)"]),
        ];
        for (what, lines, want) in cases {
            assert_eq!(check(&lines), want, "{what}");
        }
    }

    #[test]
    fn producers_interleave_and_files_continue_each_other() {
        let a = chain_of_five("a");
        let b = chain_of_five("b");
        let mixed: Vec<String> = a.iter().zip(&b).flat_map(|(x, y)| [x.clone(), y.clone()]).collect();
        assert_eq!(check(&mixed), Vec::<String>::new());
        let verified = verify(&[("1".into(), a[..3].join("\n")), ("2".into(), a[3..].join("\n"))], &[]);
        assert!(verified.findings.is_empty(), "{:?}", verified.findings);
        let out_of_order = verify(&[("2".into(), a[3..].join("\n")), ("1".into(), a[..3].join("\n"))], &[]);
        assert_eq!(out_of_order.findings[0].file, "2");
    }

    #[test]
    fn which_methods_are_recorded() {
        let writes = AuditConfig::default();
        assert!(writes.covers("POST") && writes.covers("DELETE") && writes.covers("PATCH") && writes.covers("PROPFIND"));
        assert!(!writes.covers("GET") && !writes.covers("HEAD") && !writes.covers("OPTIONS"));
        assert!(AuditConfig { records: Records::All, signing: None }.covers("GET"));
        assert!(AuditConfig::parse(br#"{"records": "reads"}"#).is_err());
        assert_eq!(AuditConfig::parse(br#"{"records": "all"}"#), Ok(AuditConfig { records: Records::All, signing: None }));
    }

    /// A signer from a fixed seed, signing at least every `every` records.
    fn signer(seed: u8, every: u64, seconds: u64) -> (Signer, VerifyingKey) {
        let (private, public, _) = signing::key_pair([seed; 32]);
        let config = json!({"records": "all", "signing": {"key": {"inline_string": private}, "every": every, "seconds": seconds}});
        let parsed = AuditConfig::parse(config.to_string().as_bytes()).unwrap();
        (parsed.signing.unwrap().signer(&|_| None).unwrap(), VerifyingKey::parse(&public).unwrap())
    }

    /// `n` records of a fresh chain, one millisecond apart.
    fn signed_chain(producer: &str, n: u64, signer: Option<&Signer>) -> Vec<String> {
        CHAIN.with(|c| *c.borrow_mut() = None);
        (1..=n).map(|i| seal(record(i), || producer.to_string(), signer, 1_000_000 + i)).collect()
    }

    /// What someone who can write the log (not the key) does: edits record `from` with `edit`
    /// and recomputes `prev` and `hash` from there on.
    fn rechained(lines: &[String], from: usize, edit: impl Fn(&mut Map<String, Value>)) -> Vec<String> {
        let mut out: Vec<String> = lines[..from].to_vec();
        let mut prev = serde_json::from_str::<Value>(&lines[from - 1]).unwrap()["hash"].as_str().unwrap().to_string();
        for (i, line) in lines[from..].iter().enumerate() {
            let mut v: Map<String, Value> = serde_json::from_str(line).unwrap();
            if i == 0 {
                edit(&mut v);
            }
            v.insert("prev".into(), Value::String(prev.clone()));
            let hash = seal_hash(&v);
            v.insert("hash".into(), Value::String(hash.clone()));
            prev = hash;
            out.push(Value::Object(v).to_string());
        }
        out
    }

    #[test]
    fn signed_chains_hold_against_whoever_writes_the_log() {
        let (key, public) = signer(7, 3, 3600);
        let (other, other_public) = signer(8, 3, 3600);
        let lines = signed_chain("p1", 10, Some(&key));
        let signed: Vec<u64> = lines.iter().filter(|l| l.contains("\"signature\"")).map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
        assert_eq!(signed, [1, 4, 7, 10], "the first, then every third");
        let check_with = |lines: &[String], keys: &[VerifyingKey]| {
            let v = verify(&[("audit.log".into(), lines.join("\n"))], keys);
            (v.findings.into_iter().map(|f| format!("{}: {}", f.line, f.message)).collect::<Vec<_>>(), v.unsigned_tail, v.starts)
        };
        let none = Vec::<String>::new();
        assert_eq!(check_with(&lines, std::slice::from_ref(&public)), (none.clone(), vec![], vec![]));
        assert_eq!(check_with(&lines, &[other_public.clone(), public.clone()]).0, none, "rotation: old and new keys together");
        // Records after the last signature are reported, not refused: the next signs them.
        let longer = signed_chain("p1", 12, Some(&key));
        assert_eq!(check_with(&longer, std::slice::from_ref(&public)).1, vec![("p1".to_string(), 2)]);

        let altered = rechained(&lines, 4, |v| {
            v.insert("status".into(), json!(200));
        });
        // Every signature from #7 on removed, the chain recomputed.
        let mut unsigned = lines.clone();
        for line in &mut unsigned[6..] {
            let mut m: Map<String, Value> = serde_json::from_str(line).unwrap();
            m.remove("signature");
            *line = Value::Object(m).to_string();
        }
        let stripped = rechained(&unsigned, 6, |_| {});
        let invented = signed_chain("p9", 4, None);
        let foreign = signed_chain("p1", 10, Some(&other));
        let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
            ("a record altered, the chain recomputed", altered, vec!["7: p1 #7: its signature does not verify (altered, or signed with another key)"]),
            ("signatures removed, the chain recomputed", stripped, vec!["7: p1 #7: 3 records in a row without a valid signature (this producer signs at least every 3): signatures removed"]),
            ("an invented producer", invented, vec!["1: p9: no record signed with a key given to verify (an unsigned or invented producer)"]),
            ("signed with a key not given", foreign.clone(), vec![
                "1: p1 #1: signed with a key not given to verify (kid OTHER)",
                "1: p1: no record signed with a key given to verify (an unsigned or invented producer)",
            ]),
        ];
        for (name, lines, want) in cases {
            let want: Vec<String> = want.iter().map(|w| w.replace("OTHER", &other.kid)).collect();
            let got = check_with(&lines, std::slice::from_ref(&public)).0;
            assert!(want.iter().all(|w| got.contains(w)), "{name}: {got:#?}");
        }
        // Without keys, the chain alone: the same recomputed chain verifies (why signing exists).
        assert_eq!(check_with(&rechained(&lines, 4, |v| { v.insert("status".into(), json!(200)); }), &[]).0, none);

        // One rotated file read alone: anchored by its signatures, not by the file before it.
        let rotated = lines[4..].to_vec();
        assert_eq!(check_with(&rotated, std::slice::from_ref(&public)), (none.clone(), vec![], vec![("p1".to_string(), 5)]));
        assert_eq!(check_with(&rotated, &[]).0, vec!["1: p1 #5: 4 record(s) before it are missing (expected #1)".to_string()]);
        let mut altered_first = rotated.clone();
        altered_first[0] = altered_first[0].replace("/orders/5", "/orders/6");
        assert!(check_with(&altered_first, &[public]).0.iter().any(|f| f.starts_with("1: p1 #5: altered")));
    }

    #[test]
    fn signing_is_due_by_count_and_by_time() {
        let (key, _) = signer(7, 64, 1);
        CHAIN.with(|c| *c.borrow_mut() = None);
        let at = |ms: u64| seal(record(1), || "p".into(), Some(&key), ms).contains("\"signature\"");
        assert_eq!([at(0), at(500), at(999), at(1000), at(1500), at(2000)], [true, false, false, true, false, true]);
        // The key is never printed.
        assert!(!format!("{key:?}").contains(&signing::key_pair([7; 32]).0));
    }

    #[test]
    fn signing_settings_are_refused_whole() {
        let parse = |signing: Value| AuditConfig::parse(json!({"signing": signing}).to_string().as_bytes()).err().map(|e| format!("{}: {}", e.path, e.message));
        let key = signing::key_pair([1; 32]).0;
        assert_eq!(parse(json!({"key": {"inline_string": key}})), None);
        assert_eq!(parse(json!({"key": {"environment_variable": "MESHWARD_AUDIT_KEY"}})), None);
        let rows = [
            (json!({"key": {"inline_string": "not base64!"}}), "signing.key.inline_string: is not standard base64"),
            (json!({"key": {"inline_string": "AAAA"}}), "signing.key.inline_string: is not a 32-byte Ed25519 seed"),
            (json!({"key": {}}), "signing.key: set exactly one"),
            (json!({"key": {"inline_string": key, "environment_variable": "X"}}), "signing.key: set exactly one"),
            (json!({"key": {"inline_string": key}, "every": 0}), "signing.every: must be from 1"),
            (json!({"key": {"inline_string": key}, "seconds": 0}), "signing.seconds: must be from 1"),
            (json!({"key": {"inline_string": key}, "evry": 3}), "unknown field `evry`"),
        ];
        for (signing, want) in rows {
            let got = parse(signing).unwrap_or_default();
            assert!(got.contains(want), "{got} / {want}");
            assert!(!got.contains(&key), "never the key");
        }
        let from_env = AuditConfig::parse(br#"{"signing": {"key": {"environment_variable": "K"}}}"#).unwrap().signing.unwrap();
        assert!(from_env.signer(&|_| None).unwrap_err().message.contains("\"K\" is not set"));
        assert!(from_env.signer(&|_| Some(key.clone())).is_ok());
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_257_400_123), "2026-12-03T00:23:20.123Z");
    }
}
