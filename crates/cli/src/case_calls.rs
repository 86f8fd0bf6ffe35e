//! How `meshward test` answers the calls the modules make: a remote JWKS fetch is answered with
//! the test key's JWKS (or fails, as the case file says), and the fleet engine's answers —
//! the rate-limit service's verdict, a seen-set claim's state, a settle — are the ones the case
//! file declares, call by call. The modules decide on those answers as they would on the real
//! engine's; no count or seen-set is kept here.

use std::collections::BTreeMap;
use std::fmt;

use meshward_core::fleet::{ClaimRequest, ClaimResponse, ClaimState, SettleOutcome, SettleRequest, SettleResponse, CLAIM_METHOD, SEEN_SET_SERVICE, SETTLE_METHOD};
use meshward_ratelimit::rls;
use meshward_wasmhost::{Call, CallKind, Calls, Message};
use prost::Message as _;
use serde::Deserialize;

/// How a remote JWKS fetch is answered: `served`, `unavailable` or `{status: N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum JwksAnswer {
    /// The test key's JWKS, 200.
    #[default]
    Served,
    /// No answer (the IdP unreachable, a timeout).
    Unavailable,
    /// The IdP answers this status with no key set.
    Status(u16),
}

impl<'de> Deserialize<'de> for JwksAnswer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let status = value.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("status")).and_then(serde_json::Value::as_u64);
        match (value.as_str(), status) {
            (Some("served"), _) => Ok(JwksAnswer::Served),
            (Some("unavailable"), _) => Ok(JwksAnswer::Unavailable),
            (_, Some(status)) if (100..=599).contains(&status) => Ok(JwksAnswer::Status(u16::try_from(status).unwrap_or(500))),
            _ => Err(serde::de::Error::custom(format!("jwks: {value} is not served, unavailable or {{status: 100-599}}"))),
        }
    }
}

/// One answer, or one per call in turn (the last one repeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InTurn<T> {
    One(T),
    Each(Vec<T>),
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for InTurn<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let one = |v: serde_json::Value| T::deserialize(v).map_err(serde::de::Error::custom);
        match value {
            serde_json::Value::Array(list) if list.is_empty() => Err(serde::de::Error::custom("an empty list answers no call")),
            serde_json::Value::Array(list) => list.into_iter().map(one).collect::<Result<_, _>>().map(InTurn::Each),
            v => one(v).map(InTurn::One),
        }
    }
}

impl<T: Copy> InTurn<T> {
    fn nth(&self, n: usize) -> Option<T> {
        match self {
            InTurn::One(t) => Some(*t),
            InTurn::Each(list) => list.get(n).or(list.last()).copied(),
        }
    }
}

/// The rate-limit service's verdict on a global rule's hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAnswer {
    Ok,
    OverLimit,
    Unavailable,
}

/// What a seen-set claim finds (a webhook delivery, an idempotency key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimAnswer {
    /// The key was free: this request holds it.
    Claimed,
    /// The same request holds it and has not been answered yet.
    InFlight,
    /// The same request was accepted before (answered with the record this case's earlier
    /// settle kept, if any).
    Seen,
    /// The key was used before by a different request (another fingerprint).
    Reused,
    Unavailable,
}

/// What a settle gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleAnswer {
    Settled,
    /// The claim is no longer this request's.
    Conflict,
    Unavailable,
}

/// The fleet engine's answers (`fleet:` in a case file or a case; a case's keys override the
/// file's). Unset: `ok`, `claimed`, `settled`, the engine of a quiet fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetAnswers {
    #[serde(default)]
    pub ratelimit: Option<InTurn<RateLimitAnswer>>,
    #[serde(default)]
    pub claim: Option<InTurn<ClaimAnswer>>,
    #[serde(default)]
    pub settle: Option<InTurn<SettleAnswer>>,
}

impl FleetAnswers {
    /// These answers, with `over`'s where it sets them.
    pub fn with(&self, over: Option<&FleetAnswers>) -> FleetAnswers {
        let Some(over) = over else { return self.clone() };
        FleetAnswers {
            ratelimit: over.ratelimit.clone().or_else(|| self.ratelimit.clone()),
            claim: over.claim.clone().or_else(|| self.claim.clone()),
            settle: over.settle.clone().or_else(|| self.settle.clone()),
        }
    }
}

/// The JWKS each remote provider's cluster serves in a run (a provider with a test key).
pub type ServedJwks = BTreeMap<String, String>;

/// A case's calls answered: its JWKS and fleet answers, counted in turn.
pub struct CaseCalls<'a> {
    jwks: JwksAnswer,
    served: &'a ServedJwks,
    fleet: FleetAnswers,
    made: BTreeMap<&'static str, usize>,
    /// Each seen-set key's fingerprint and record as this case's settles kept them.
    kept: BTreeMap<String, (String, Vec<u8>)>,
    /// Each claim's fingerprint by key (what a `seen` / `in_flight` answer echoes).
    claimed: BTreeMap<String, String>,
}

impl<'a> CaseCalls<'a> {
    pub fn new(jwks: JwksAnswer, served: &'a ServedJwks, fleet: FleetAnswers) -> CaseCalls<'a> {
        CaseCalls { jwks, served, fleet, made: BTreeMap::new(), kept: BTreeMap::new(), claimed: BTreeMap::new() }
    }

    fn turn(&mut self, kind: &'static str) -> usize {
        let n = self.made.entry(kind).or_default();
        *n += 1;
        *n - 1
    }
}

/// An unavailable engine, as Envoy reports a cluster with no healthy host.
fn unavailable(call: &Call) -> (u32, String) {
    (14, format!("{} does not answer in this case", call.cluster))
}

impl Calls for CaseCalls<'_> {
    fn http(&mut self, call: &Call) -> Option<Message> {
        let jwks = self.served.get(&call.cluster)?;
        match self.jwks {
            JwksAnswer::Served => Some((vec![(":status".into(), "200".into()), ("content-type".into(), "application/json".into())], jwks.clone().into_bytes())),
            JwksAnswer::Unavailable => None,
            JwksAnswer::Status(status) => Some((vec![(":status".into(), status.to_string())], Vec::new())),
        }
    }

    fn grpc(&mut self, call: &Call) -> Result<Vec<u8>, (u32, String)> {
        let CallKind::Grpc { service, method, message } = &call.kind else { return Err(unavailable(call)) };
        match (service.as_str(), method.as_str()) {
            (rls::SERVICE, rls::METHOD) => {
                let turn = self.turn("ratelimit");
                let answer = self.fleet.ratelimit.as_ref().map_or(Some(RateLimitAnswer::Ok), |a| a.nth(turn));
                let code = match answer {
                    Some(RateLimitAnswer::Ok) => rls::CODE_OK,
                    Some(RateLimitAnswer::OverLimit) => rls::CODE_OVER_LIMIT,
                    Some(RateLimitAnswer::Unavailable) | None => return Err(unavailable(call)),
                };
                Ok(rls::RateLimitResponse { overall_code: code, statuses: Vec::new() }.encode_to_vec())
            }
            (SEEN_SET_SERVICE, CLAIM_METHOD) => {
                let claim = ClaimRequest::decode(message.as_slice()).map_err(|e| (3, format!("a claim that is no ClaimRequest: {e}")))?;
                let turn = self.turn("claim");
                let answer = self.fleet.claim.as_ref().map_or(Some(ClaimAnswer::Claimed), |a| a.nth(turn));
                let (fingerprint, record) = self.kept.get(&claim.key).cloned().unwrap_or_else(|| (claim.fingerprint.clone(), Vec::new()));
                let response = match answer {
                    Some(ClaimAnswer::Claimed) => {
                        self.claimed.insert(claim.key.clone(), claim.fingerprint.clone());
                        let token = if claim.token.is_empty() { format!("meshward-test-claim-{turn}") } else { claim.token };
                        ClaimResponse { state: ClaimState::Claimed as i32, token, ..ClaimResponse::default() }
                    }
                    Some(ClaimAnswer::InFlight) => ClaimResponse { state: ClaimState::InFlight as i32, remaining_ms: claim.hold_ms, fingerprint, ..ClaimResponse::default() },
                    Some(ClaimAnswer::Seen) => ClaimResponse { state: ClaimState::Seen as i32, remaining_ms: claim.window_ms, fingerprint, record, ..ClaimResponse::default() },
                    Some(ClaimAnswer::Reused) => ClaimResponse {
                        state: ClaimState::Seen as i32,
                        remaining_ms: claim.window_ms,
                        fingerprint: format!("another request than {}", claim.fingerprint),
                        ..ClaimResponse::default()
                    },
                    Some(ClaimAnswer::Unavailable) | None => return Err(unavailable(call)),
                };
                Ok(response.encode_to_vec())
            }
            (SEEN_SET_SERVICE, SETTLE_METHOD) => {
                let settle = SettleRequest::decode(message.as_slice()).map_err(|e| (3, format!("a settle that is no SettleRequest: {e}")))?;
                let turn = self.turn("settle");
                let answer = self.fleet.settle.as_ref().map_or(Some(SettleAnswer::Settled), |a| a.nth(turn));
                match answer {
                    Some(SettleAnswer::Settled) => {
                        if settle.outcome == SettleOutcome::Keep as i32 || (settle.outcome == SettleOutcome::Unspecified as i32 && settle.accepted) {
                            let fingerprint = self.claimed.get(&settle.key).cloned().unwrap_or(settle.fingerprint);
                            self.kept.insert(settle.key, (fingerprint, settle.record));
                        }
                        Ok(SettleResponse { settled: true }.encode_to_vec())
                    }
                    Some(SettleAnswer::Conflict) => Ok(SettleResponse { settled: false }.encode_to_vec()),
                    Some(SettleAnswer::Unavailable) | None => Err(unavailable(call)),
                }
            }
            _ => Err((12, format!("{service}/{method}: no fleet service this host answers"))),
        }
    }
}

impl fmt::Display for JwksAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksAnswer::Served => f.write_str("served"),
            JwksAnswer::Unavailable => f.write_str("unavailable"),
            JwksAnswer::Status(s) => write!(f, "status {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(service: &str, method: &str, message: Vec<u8>) -> Call {
        Call { token: 1, context: 2, cluster: "meshward-fleet".into(), kind: CallKind::Grpc { service: service.into(), method: method.into(), message }, timeout_ms: 500 }
    }

    fn claim(calls: &mut CaseCalls<'_>, fingerprint: &str) -> Result<ClaimResponse, (u32, String)> {
        let request = ClaimRequest { key: "ns/k".into(), hold_ms: 1000, fingerprint: fingerprint.into(), window_ms: 60_000, token: "t".into() };
        calls.grpc(&grpc(SEEN_SET_SERVICE, CLAIM_METHOD, request.encode_to_vec())).map(|b| ClaimResponse::decode(b.as_slice()).unwrap())
    }

    #[test]
    fn answers_come_in_turn_and_the_last_repeats() {
        let served = ServedJwks::new();
        let fleet: FleetAnswers = serde_yaml::from_str("{ratelimit: [ok, over_limit], claim: [claimed, seen]}").unwrap();
        let mut calls = CaseCalls::new(JwksAnswer::Served, &served, fleet);
        let rl = |calls: &mut CaseCalls<'_>| rls::decode_response(&calls.grpc(&grpc(rls::SERVICE, rls::METHOD, Vec::new())).unwrap()).unwrap().over_limit;
        assert_eq!([rl(&mut calls), rl(&mut calls), rl(&mut calls)], [false, true, true]);
        assert_eq!(claim(&mut calls, "f1").unwrap().state, ClaimState::Claimed as i32);
        // The settle keeps the record; the next claim finds the same request, and its record.
        let settle = SettleRequest { key: "ns/k".into(), token: "t".into(), accepted: true, keep_ms: 1, record: b"r".to_vec(), outcome: SettleOutcome::Keep as i32, fingerprint: "f1".into() };
        let settled = calls.grpc(&grpc(SEEN_SET_SERVICE, SETTLE_METHOD, settle.encode_to_vec())).unwrap();
        assert!(SettleResponse::decode(settled.as_slice()).unwrap().settled);
        let seen = claim(&mut calls, "f1").unwrap();
        assert_eq!((seen.state, seen.fingerprint.as_str(), seen.record.as_slice()), (ClaimState::Seen as i32, "f1", &b"r"[..]));
    }

    #[test]
    fn unset_answers_are_a_quiet_fleet_and_unavailable_fails_the_call() {
        let served = ServedJwks::from([("idp".to_string(), "{\"keys\":[]}".to_string())]);
        let mut quiet = CaseCalls::new(JwksAnswer::Served, &served, FleetAnswers::default());
        assert_eq!(claim(&mut quiet, "f").unwrap().state, ClaimState::Claimed as i32);
        let fetch = Call { token: 1, context: 0, cluster: "idp".into(), kind: CallKind::Http { headers: Vec::new(), body: Vec::new() }, timeout_ms: 1 };
        assert_eq!(quiet.http(&fetch).map(|(_, body)| body), Some(b"{\"keys\":[]}".to_vec()));
        let down: FleetAnswers = serde_yaml::from_str("{claim: unavailable, settle: conflict}").unwrap();
        let mut down = CaseCalls::new(JwksAnswer::Unavailable, &served, down);
        assert_eq!(claim(&mut down, "f").map_err(|(code, _)| code), Err(14));
        assert_eq!(down.http(&fetch), None);
        // A cluster that serves no test key's JWKS does not answer.
        let other = Call { cluster: "elsewhere".into(), ..fetch };
        assert_eq!(quiet.http(&other), None);
        assert_eq!(serde_yaml::from_str::<JwksAnswer>("{status: 500}").unwrap(), JwksAnswer::Status(500));
    }
}
