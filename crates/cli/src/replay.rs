//! `meshward replay POLICY --from TRAFFIC`: recorded requests run through the policy in the
//! real modules (the host of `meshward test`), each at the time it was recorded, and compared
//! with what the policy in force did: the recorded answer, or `--baseline OLD_POLICY` run the
//! same way. What would change, newly refused and newly allowed, by stage, rule and reason.
//!
//! Traffic comes from a HAR file (requests as sent, tokens included) or from the replay log
//! `render envoy --access-log` writes (a JSON line per request: its line and the verified
//! caller's claims, no token): each caller is signed again with a replay key its provider
//! trusts in the run, so every stage after the signature check decides as on the real token.

use std::collections::BTreeMap;
use std::path::Path;

use meshward_wasmhost::{CallKind, Calls, Chain, Request, Upstream};
use serde_json::{json, Map, Value};

use crate::case_calls::{CaseCalls, FleetAnswers, JwksAnswer};
use crate::policy::Policy;
use crate::policy_test::{self, Options, TestKey, TestKeys};

/// One recorded request.
#[derive(Debug)]
pub struct Recorded {
    /// When it was sent, in Unix seconds (the clock it is replayed at).
    pub at: u64,
    pub request: Request,
    /// What it got then: (status, why it was refused when it was: meshward's deny reason or
    /// Envoy's response details).
    pub answer: Option<(u16, Option<String>)>,
    /// `METHOD path`, for examples.
    pub label: String,
    /// The verified caller a replay log recorded: (provider, claims), signed again for the run.
    pub caller: Option<(String, Map<String, Value>)>,
    /// Why the request cannot be sent again as it was (its body is not in the log).
    pub unreplayable: Option<String>,
}

/// Reads recorded traffic: a HAR file, or the replay log `render envoy --access-log` writes.
pub fn read_traffic(path: &Path) -> Result<Vec<Recorded>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.pointer("/log/entries").is_some() => read_har(&name.to_string(), &v),
        Ok(v) if v.get("method").is_some() && text.trim().lines().count() == 1 => read_access_log(&name.to_string(), &text),
        Ok(_) => Err(format!("{name}: not a HAR file (no log.entries) nor a replay log (render envoy --access-log)")),
        Err(_) => read_access_log(&name.to_string(), &text),
    }
}

/// Reads a replay log: one JSON object per line ([`crate::render::REPLAY_LOG_FIELDS`]).
fn read_access_log(name: &str, text: &str) -> Result<Vec<Recorded>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("{name}:{}: not JSON: {e}", i + 1))?;
            log_line(&v).map_err(|why| format!("{name}:{}: {why}", i + 1))
        })
        .collect()
}

fn log_line(v: &Value) -> Result<Recorded, String> {
    if v.get("producer").is_some() && v.get("seq").is_some() {
        return Err("an audit record: it holds no caller's claims nor the request's headers to send again; \
                    record traffic with `meshward render envoy --access-log FILE` and replay that"
            .into());
    }
    // Envoy writes an absent value as null (or "-" in older releases).
    let field = |key: &str| v.get(key).and_then(|f| match f {
        Value::String(s) if s != "-" && !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let need = |key: &str| field(key).ok_or_else(|| format!("{key} missing (is this a replay log? render envoy --access-log writes one)"));
    let at = parse_rfc3339(&need("time")?).ok_or("time: not an RFC 3339 time")?;
    let (method, path) = (need("method")?, need("path")?);
    let mut headers = vec![(":method".to_string(), method.clone()), (":path".to_string(), path.clone()),
                           (":authority".to_string(), field("authority").unwrap_or_else(|| "replay".into())), (":scheme".to_string(), "http".to_string())];
    if let Some(content_type) = field("content_type") {
        headers.push(("content-type".into(), content_type));
    }
    let caller = match field("principal") {
        None => None,
        Some(text) => {
            let p: Value = serde_json::from_str(&text).map_err(|e| format!("principal: not JSON: {e}"))?;
            let provider = p.get("provider").and_then(Value::as_str).ok_or("principal: no provider")?;
            let claims = p.get("claims").and_then(Value::as_object).ok_or("principal: no claims")?;
            Some((provider.to_string(), claims.clone()))
        }
    };
    let status = need("status")?.parse::<u16>().map_err(|_| "status: not a status code")?;
    // A request the service answered went through; any other answer was made on the way (a
    // wasm filter's own answer has empty details).
    let refused = match v.get("details").and_then(Value::as_str) {
        Some("via_upstream") => None,
        Some("") | None => Some(format!("refused ({status})")),
        Some(details) => Some(format!("refused ({status} {details})")),
    };
    let body = field("bytes_received").and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
    Ok(Recorded {
        at,
        request: Request { headers, body: None, chunk: 0, properties: policy_test::connection(field("source").as_deref(), field("peer").as_deref()) },
        answer: Some((status, refused)),
        label: format!("{method} {path}"),
        caller,
        unreplayable: (body > 0).then(|| "its body is not in the log".to_string()),
    })
}

/// What a policy did to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused: status, and the stage, rule and reason that refused it (as the counters name them).
    Refused { status: u16, why: String },
}

/// Reads a HAR file (browser devtools, mitmproxy, Charles): every entry's request.
fn read_har(name: &str, har: &Value) -> Result<Vec<Recorded>, String> {
    let entries = har.pointer("/log/entries").and_then(Value::as_array).ok_or_else(|| format!("{name}: not a HAR file (log.entries is no list)"))?;
    entries.iter().enumerate().map(|(i, e)| entry(e).map_err(|why| format!("{name}: log.entries[{i}]: {why}"))).collect()
}

fn entry(e: &Value) -> Result<Recorded, String> {
    let text = |v: Option<&Value>, what: &str| v.and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("{what} missing"));
    let at = parse_rfc3339(&text(e.get("startedDateTime"), "startedDateTime")?).ok_or("startedDateTime: not an RFC 3339 time")?;
    let req = e.get("request").ok_or("request missing")?;
    let method = text(req.get("method"), "request.method")?;
    let url = text(req.get("url"), "request.url")?;
    let (authority, path) = split_url(&url).ok_or_else(|| format!("request.url: {url:?} is not an absolute http(s) URL"))?;
    let mut headers = vec![(":method".to_string(), method.clone()), (":path".to_string(), path.clone()), (":authority".to_string(), authority)];
    headers.push((":scheme".to_string(), if url.starts_with("https:") { "https" } else { "http" }.to_string()));
    for h in req.get("headers").and_then(Value::as_array).into_iter().flatten() {
        let (Some(name), Some(value)) = (h.get("name").and_then(Value::as_str), h.get("value").and_then(Value::as_str)) else {
            return Err("request.headers: an entry without name and value".into());
        };
        let name = name.to_ascii_lowercase();
        // HTTP/2 recordings list pseudo-headers; the connection's own headers are Envoy's.
        if name.starts_with(':') || matches!(name.as_str(), "host" | "connection" | "keep-alive" | "transfer-encoding" | "upgrade") {
            continue;
        }
        headers.push((name, value.to_string()));
    }
    let body = req.pointer("/postData/text").and_then(Value::as_str).map(|t| t.as_bytes().to_vec());
    let answer = e.get("response").and_then(|r| {
        let status = u16::try_from(r.get("status")?.as_u64()?).ok()?;
        let reason = r.pointer("/content/text").and_then(Value::as_str).and_then(denial_reason);
        Some((status, reason))
    });
    Ok(Recorded { at, request: Request { headers, body, chunk: 0, properties: Vec::new() }, answer, label: format!("{method} {path}"), caller: None, unreplayable: None })
}

/// meshward's deny reason when a body is meshward's denial (`{"error", "reason", "request_id"}`
/// and nothing else).
fn denial_reason(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let map = v.as_object()?;
    if !map.keys().all(|k| matches!(k.as_str(), "error" | "reason" | "request_id")) {
        return None;
    }
    map.get("reason")?.as_str().map(str::to_string)
}

fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    (!authority.is_empty()).then(|| (authority.to_string(), path.to_string()))
}

/// Unix seconds of an RFC 3339 time (`2026-12-04T10:00:00.123Z`, `…+02:00`).
pub fn parse_rfc3339(t: &str) -> Option<u64> {
    let num = |s: &str| s.parse::<i64>().ok();
    let (date, time) = t.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => return None,
    };
    let mut c = clock.splitn(3, ':');
    let (h, m) = (num(c.next()?)?, num(c.next()?)?);
    let s = num(c.next()?.split('.').next()?)?;
    let offset_s = match offset {
        "Z" | "z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (num(oh)? * 3600 + num(om)? * 60)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (H. Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s - offset_s).ok()
}

/// A policy as replay runs it: its chain, with each recorded caller's provider trusting a
/// replay key (a remote one served it by its cluster).
struct Replayer {
    chain: Chain,
    keys: TestKeys,
    served: crate::case_calls::ServedJwks,
}

impl Replayer {
    fn start(policy: &Policy, providers: &BTreeMap<String, TestKey>, idp_keys: &BTreeMap<String, String>, options: &Options<'_>, env: &[(String, String)], at: u64) -> Result<Replayer, String> {
        let name = policy.path.display().to_string();
        let (policy, keys, mut served) = policy_test::with_test_keys(policy, providers, &name)?;
        for (provider, jwks) in idp_keys {
            if providers.contains_key(provider) {
                return Err(format!("--jwks {provider}: the recorded callers of {provider} are signed again with a replay key; its keys are not read"));
            }
            let cluster = policy
                .stages
                .iter()
                .filter(|s| s.kind == "jwt")
                .find_map(|s| s.config.pointer(&format!("/providers/{provider}/remote_jwks/http_uri/cluster"))?.as_str())
                .ok_or_else(|| format!("--jwks {provider}: {name} has no jwt provider `{provider}` with remote_jwks (local keys are in the policy)"))?;
            served.insert(cluster.to_string(), jwks.clone());
        }
        let chain = policy_test::start(&policy, options, env, at, &mut quiet_fleet(&served)).map_err(|e| format!("{name}: {e}"))?;
        Ok(Replayer { chain, keys, served })
    }

    /// The request as sent again: its recorded caller signed with the replay key.
    fn request(&self, r: &Recorded) -> Result<Request, String> {
        let mut request = r.request.clone();
        if let Some((provider, claims)) = &r.caller {
            let (key, _) = self.keys.get(provider).ok_or_else(|| format!("{}: no jwt provider `{provider}` in the policy", r.label))?;
            request.headers.push(("authorization".into(), format!("Bearer {}", key.sign(claims)?)));
        }
        Ok(request)
    }
}

/// Calls answered as a fleet with nothing recorded answers (its state then is not in any
/// recording), the replay keys' JWKS served.
fn quiet_fleet(served: &crate::case_calls::ServedJwks) -> CaseCalls<'_> {
    CaseCalls::new(JwksAnswer::Served, served, FleetAnswers::default())
}

/// The verdict of a policy's chain on one recorded request, and whether the fleet engine was
/// asked on the way (its answer then is not recorded: replay assumes a quiet fleet).
fn verdict(replayer: &mut Replayer, r: &Recorded) -> Result<(Verdict, bool), String> {
    let request = replayer.request(r)?;
    let Replayer { chain, served, .. } = replayer;
    let calls: &mut dyn Calls = &mut quiet_fleet(served);
    chain.restore();
    chain.clock().set(r.at.saturating_mul(1_000_000_000));
    let (outcome, decisions) = policy_test::decided_exchange(chain, &request, &Upstream::default(), calls).map_err(|e| format!("{}: {e}", r.label))?;
    let fleet = outcome.calls.iter().any(|c| matches!(c.kind, CallKind::Grpc { .. }));
    if outcome.upstream_request.is_some() && outcome.local_reply.is_none() {
        return Ok((Verdict::Allowed, fleet));
    }
    let denied = policy_test::refusal(&decisions).map(|(stage, route, reason)| [Some(stage), route, reason].into_iter().flatten().collect::<Vec<_>>().join(" "));
    let reason = outcome.local_reply.as_ref().and_then(policy_test::reason);
    let why = denied.or(reason).unwrap_or_else(|| if outcome.held { "held".into() } else { "refused".into() });
    Ok((Verdict::Refused { status: outcome.status, why }, fleet))
}

/// The recorded answer as a verdict: refused when the body is meshward's denial.
fn recorded(r: &Recorded) -> Option<Verdict> {
    let (status, reason) = r.answer.clone()?;
    Some(match reason {
        Some(why) => Verdict::Refused { status, why },
        None => Verdict::Allowed,
    })
}

/// What changed for one group of requests (the stage, rule and reason that now refuses them, or
/// that refused them before).
#[derive(Default)]
pub struct Group {
    pub count: usize,
    pub examples: Vec<String>,
}

pub struct Report {
    pub replayed: usize,
    pub unchanged: usize,
    /// Requests with nothing to compare with (no recorded answer, no baseline).
    pub unknown: usize,
    /// Requests not sent again, by why (a body the log does not hold).
    pub skipped: BTreeMap<String, usize>,
    pub newly_refused: BTreeMap<String, Group>,
    pub newly_allowed: BTreeMap<String, Group>,
}

/// Replays `traffic` through `policy` (and `baseline` when given); the changes. `idp_keys`: the
/// JWKS document each remote provider's fetch is answered with (for recorded real tokens).
pub fn replay(policy: &Policy, baseline: Option<&Policy>, traffic: &[Recorded], idp_keys: &BTreeMap<String, String>, options: &Options<'_>, env: &[(String, String)]) -> Result<Report, String> {
    let at = traffic.first().map_or(0, |r| r.at);
    // Each provider a recorded caller names trusts a replay key in this run.
    let providers: BTreeMap<String, TestKey> =
        traffic.iter().filter_map(|r| r.caller.as_ref()).map(|(p, _)| (p.clone(), TestKey { kid: Some("meshward-replay".into()) })).collect();
    let mut chain = Replayer::start(policy, &providers, idp_keys, options, env, at)?;
    let mut before = match baseline {
        Some(b) => Some(Replayer::start(b, &providers, idp_keys, options, env, at)?),
        None => None,
    };
    let mut report = Report { replayed: 0, unchanged: 0, unknown: 0, skipped: BTreeMap::new(), newly_refused: BTreeMap::new(), newly_allowed: BTreeMap::new() };
    for r in traffic {
        if let Some(why) = &r.unreplayable {
            *report.skipped.entry(why.clone()).or_default() += 1;
            continue;
        }
        report.replayed += 1;
        let (now, mut fleet) = verdict(&mut chain, r)?;
        let then = match &mut before {
            Some(b) => {
                let (then, asked) = verdict(b, r)?;
                fleet |= asked;
                Some(then)
            }
            None => recorded(r),
        };
        let example = format!("{} ({})", r.label, meshward_core::audit::rfc3339(r.at.saturating_mul(1000)));
        // A change decided on a fleet answer may be the engine's state then, not the policy.
        let note = if fleet { " [on a fleet answer: replay assumes a quiet fleet]" } else { "" };
        match (then, now) {
            (None, _) => report.unknown += 1,
            (Some(Verdict::Allowed), Verdict::Refused { status, why }) => add(&mut report.newly_refused, format!("{why} ({status}){note}"), example),
            (Some(Verdict::Refused { why, .. }), Verdict::Allowed) => add(&mut report.newly_allowed, format!("was {why}{note}"), example),
            (Some(_), _) => report.unchanged += 1,
        }
    }
    Ok(report)
}

/// Examples kept per group.
const EXAMPLES: usize = 3;

fn add(groups: &mut BTreeMap<String, Group>, key: String, example: String) {
    let g = groups.entry(key).or_default();
    g.count += 1;
    if g.examples.len() < EXAMPLES {
        g.examples.push(example);
    }
}

impl Report {
    pub fn changed(&self) -> bool {
        !self.newly_refused.is_empty() || !self.newly_allowed.is_empty()
    }

    pub fn render_text(&self) -> String {
        let total = |g: &BTreeMap<String, Group>| g.values().map(|g| g.count).sum::<usize>();
        let mut out = String::new();
        for (title, groups) in [("newly refused", &self.newly_refused), ("newly allowed", &self.newly_allowed)] {
            if groups.is_empty() {
                continue;
            }
            out.push_str(&format!("{title} ({}):\n", total(groups)));
            for (why, g) in groups {
                out.push_str(&format!("  {why}: {}  e.g. {}\n", g.count, g.examples.join("; ")));
            }
        }
        out.push_str(&format!(
            "{} requests replayed: {} unchanged, {} newly refused, {} newly allowed{}\n",
            self.replayed,
            self.unchanged,
            total(&self.newly_refused),
            total(&self.newly_allowed),
            if self.unknown > 0 { format!(", {} without a recorded answer", self.unknown) } else { String::new() }
        ));
        for (why, n) in &self.skipped {
            out.push_str(&format!("{n} not replayed: {why}\n"));
        }
        out
    }

    pub fn render_json(&self) -> Value {
        let groups = |g: &BTreeMap<String, Group>| -> Vec<Value> {
            g.iter().map(|(why, g)| json!({"why": why, "count": g.count, "examples": g.examples})).collect()
        };
        json!({"replayed": self.replayed, "unchanged": self.unchanged, "unknown": self.unknown, "skipped": self.skipped,
               "newly_refused": groups(&self.newly_refused), "newly_allowed": groups(&self.newly_allowed)})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_back() {
        for ms in [0_u64, 951_782_400_000, 1_796_257_400_123, 1_767_225_600_000] {
            assert_eq!(parse_rfc3339(&meshward_core::audit::rfc3339(ms)), Some(ms / 1000));
        }
        assert_eq!(parse_rfc3339("2026-01-01T02:00:00+02:00"), Some(1_767_225_600));
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00-00:30"), Some(1_767_227_400));
        for bad in ["2026-13-01T00:00:00Z", "2026-01-01", "2026-01-01T00:00:00", "x"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_replay_log_line_becomes_a_request_from_its_caller() {
        let principal = json!({"provider": "demo", "issuer": "i", "subject": "alice", "audiences": [], "scopes": [], "tenant": null,
                               "claims": {"sub": "alice", "scope": "orders:read"}});
        let line = json!({"time": "2026-01-01T00:00:00.000Z", "method": "GET", "path": "/tenants/acme/orders/1?x=1", "authority": "orders",
                          "content_type": null, "bytes_received": 0, "source": "10.0.0.1:5000", "peer": null, "principal": principal.to_string(),
                          "status": 403, "details": "", "request_id": "r"});
        let r = log_line(&line).unwrap();
        assert_eq!((r.at, r.label.as_str(), r.answer.clone()), (1_767_225_600, "GET /tenants/acme/orders/1?x=1", Some((403, Some("refused (403)".into())))));
        assert_eq!(r.caller.as_ref().map(|(p, c)| (p.as_str(), c.get("sub").cloned())), Some(("demo", Some(json!("alice")))));
        assert!(r.request.properties.contains(&(vec!["source".into(), "address".into()], b"10.0.0.1:5000".to_vec())));
        assert!(r.unreplayable.is_none());
        // What the service answered went through; a request with a body cannot be sent again.
        let mut answered = line.clone();
        answered["details"] = json!("via_upstream");
        answered["bytes_received"] = json!(12);
        let r = log_line(&answered).unwrap();
        assert_eq!((r.answer, r.unreplayable.is_some()), (Some((403, None)), true));
        let mut no_method = line;
        no_method.as_object_mut().unwrap().remove("method");
        assert!(log_line(&no_method).unwrap_err().starts_with("method missing"));
    }

    #[test]
    fn a_har_entry_becomes_a_request() {
        let e = json!({"startedDateTime": "2026-01-01T00:00:00.000Z", "request": {"method": "POST", "url": "https://orders.test/tenants/a/orders?x=1",
            "headers": [{"name": ":authority", "value": "orders.test"}, {"name": "Authorization", "value": "Bearer t"}, {"name": "Host", "value": "h"}],
            "postData": {"text": "{}"}}, "response": {"status": 403, "content": {"text": "{\"error\":\"no\",\"reason\":\"tenant_boundary\"}"}}});
        let r = entry(&e).unwrap();
        assert_eq!(r.at, 1_767_225_600);
        assert_eq!(r.label, "POST /tenants/a/orders?x=1");
        assert!(r.request.headers.contains(&(":authority".into(), "orders.test".into())));
        assert!(r.request.headers.contains(&("authorization".into(), "Bearer t".into())));
        assert!(!r.request.headers.iter().any(|(k, _)| k == "host"));
        assert_eq!(r.request.body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(r.answer, Some((403, Some("tenant_boundary".into()))));
        // The service's own error body is no meshward refusal.
        assert_eq!(denial_reason(r#"{"reason":"x","detail":"y"}"#), None);
        assert!(entry(&json!({"startedDateTime": "2026-01-01T00:00:00Z", "request": {"method": "GET", "url": "/relative"}})).is_err());
    }
}
