//! The fleet-state client's wire: what a filter asks `meshward-fleet` (the engine every sidecar
//! of a service shares) over gRPC through an Envoy cluster. The engine keeps each key in Redis;
//! atomic insert-if-absent and expiry are Redis's.
//!
//! A seen-set entry walks two states: a delivery is *claimed* (in flight) while the upstream
//! handles it, then *settled*: kept as seen for `keep_ms` when the upstream accepted it, removed
//! when it did not (so the sender's retry passes), or left to lapse `hold_ms` after the claim
//! when no answer came. Only the holder of the claim's token can settle it; the filter makes
//! the token, so a claim whose answer never came (a timeout) can still be abandoned.
//!
//! A claim is held for its whole window (`window_ms`), not only the upstream's time to answer:
//! when the engine cannot be told the outcome, the key stays in flight, so no other replica
//! runs the request again, while the sidecar keeps the outcome and sends it again
//! ([`crate::unsettled`]). A settle is idempotent (the same token settles once) and writes the
//! outcome anew when the engine lost the entry meanwhile.

use std::time::Duration;

use meshward_host::{Host, HostError};
use prost::Message;
use serde::Deserialize;

use crate::config::{check_grpc_cluster, check_name, parse_duration, ConfigError};
use crate::GrpcResponse;

/// What a filter does when the fleet engine does not answer (unreachable, timeout, error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through, counted.
    Allow,
    /// Refuse it (503), counted.
    Deny,
}

impl FailureMode {
    /// The rate limit's default (a `#[serde(default = ...)]` path).
    pub fn allow() -> Self {
        FailureMode::Allow
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleetService {
    cluster: String,
    namespace: String,
    timeout: Option<String>,
    failure_mode: Option<FailureMode>,
}

/// Where a filter reaches the fleet engine: an Envoy cluster (HTTP/2) and the namespace its
/// keys live under (one per service, so services sharing an engine never share keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetService {
    pub cluster: String,
    pub namespace: String,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
}

impl FleetService {
    /// Compiles the settings at `path`; `failure_mode` defaults to the policy's own choice.
    pub fn compile(path: &str, raw: RawFleetService, default_failure: FailureMode) -> Result<FleetService, ConfigError> {
        check_grpc_cluster(&format!("{path}.cluster"), &raw.cluster)?;
        check_name(&format!("{path}.namespace"), &raw.namespace)?;
        let timeout = match raw.timeout {
            Some(t) => parse_duration(&format!("{path}.timeout"), &t)?,
            None => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(ConfigError::new(format!("{path}.timeout"), "must be positive"));
        }
        Ok(FleetService { cluster: raw.cluster, namespace: raw.namespace, timeout, failure_mode: raw.failure_mode.unwrap_or(default_failure) })
    }

    /// The key in the engine: `key` under this service's namespace.
    pub fn engine_key(&self, key: &str) -> String {
        format!("{}/{key}", self.namespace)
    }

    /// Asks to claim `key` (under this service's namespace): in flight for `hold` (the
    /// upstream's time to answer), and for the whole `window` while its outcome is unknown.
    /// `fingerprint` is kept with the entry and answered to later claims (empty: none).
    /// `token` ([`claim_token`]) is what settles the claim.
    pub fn claim(
        &self,
        host: &mut dyn Host,
        key: &str,
        token: &str,
        fingerprint: &str,
        hold: Duration,
        window: Duration,
    ) -> Result<u32, HostError> {
        let message = ClaimRequest {
            key: self.engine_key(key),
            hold_ms: millis(hold),
            fingerprint: fingerprint.to_string(),
            window_ms: millis(window.max(hold)),
            token: token.to_string(),
        }
        .encode_to_vec();
        host.dispatch_grpc_call(&self.cluster, SEEN_SET_SERVICE, CLAIM_METHOD, &message, self.timeout)
    }

    /// The settle request for a claim of `key` (under this service's namespace).
    pub fn settle_request(&self, key: &str, token: &str, fingerprint: &str, settlement: Settlement) -> SettleRequest {
        let (outcome, keep, record) = match settlement {
            Settlement::Keep { keep, record } => (SettleOutcome::Keep, keep, record),
            Settlement::Release => (SettleOutcome::Release, Duration::from_millis(1), Vec::new()),
            Settlement::Lapse => (SettleOutcome::Lapse, Duration::from_millis(1), Vec::new()),
            Settlement::Abandon { window } => (SettleOutcome::Abandon, window, Vec::new()),
        };
        SettleRequest {
            key: self.engine_key(key),
            token: token.to_string(),
            accepted: outcome == SettleOutcome::Keep,
            keep_ms: millis(keep),
            record,
            outcome: outcome as i32,
            fingerprint: fingerprint.to_string(),
        }
    }

    /// Sends a settle request to the engine.
    pub fn send_settle(&self, host: &mut dyn Host, request: &SettleRequest) -> Result<u32, HostError> {
        host.dispatch_grpc_call(&self.cluster, SEEN_SET_SERVICE, SETTLE_METHOD, &request.encode_to_vec(), self.timeout)
    }
}

/// How a claim is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Seen for `keep`, with what to answer later claims.
    Keep { keep: Duration, record: Vec<u8> },
    /// Forgotten: the next claim is granted.
    Release,
    /// No answer came, so whether the upstream ran the request is unknown: the key stays in
    /// flight until the claim's `hold` has passed, then is free.
    Lapse,
    /// The claim's own answer never came (timeout, engine down): whether the engine wrote it is
    /// unknown. Removed if it is there; otherwise a late copy of it, arriving within `window`,
    /// is refused.
    Abandon { window: Duration },
}

/// A new claim token: 128 bits from the VM's hash keys (seeded by WASI `random_get` in the
/// proxy), the key and the time; unique per claim.
pub fn claim_token(key: &str, now_us: u64) -> String {
    use std::hash::BuildHasher;
    thread_local! {
        static CLAIMS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = CLAIMS.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    let state = std::collections::hash_map::RandomState::new();
    let (high, low) = (state.hash_one((key, now_us, n, 1u8)), state.hash_one((key, now_us, n, 2u8)));
    format!("{high:016x}{low:016x}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub const SEEN_SET_SERVICE: &str = "meshward.fleet.v1.SeenSet";
pub const CLAIM_METHOD: &str = "Claim";
pub const SETTLE_METHOD: &str = "Settle";

#[derive(Clone, PartialEq, Message)]
pub struct ClaimRequest {
    /// Namespaced by the caller (`<namespace>/<endpoint>/<digest>`).
    #[prost(string, tag = "1")]
    pub key: String,
    /// How long the claim holds if it is never settled (the upstream's time to answer).
    #[prost(uint64, tag = "2")]
    pub hold_ms: u64,
    /// Kept with the entry and answered to later claims (what the request was).
    #[prost(string, tag = "3")]
    pub fingerprint: String,
    /// How long the entry lives while the claim is not settled: the whole window in which a
    /// copy must not run (at least `hold_ms`; 0 from older filters: `hold_ms`).
    #[prost(uint64, tag = "4")]
    pub window_ms: u64,
    /// What settles the claim, made by the filter (empty from older filters: the engine makes
    /// one and answers it).
    #[prost(string, tag = "5")]
    pub token: String,
}

/// Largest record the engine keeps with a seen entry.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The state a claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ClaimState {
    Unspecified = 0,
    /// The key was free; it is now held by the token in the answer.
    Claimed = 1,
    /// Another request holds the key and has not been settled yet.
    InFlight = 2,
    /// The key was settled as accepted: a replay.
    Seen = 3,
}

#[derive(Clone, PartialEq, Message)]
pub struct ClaimResponse {
    #[prost(enumeration = "ClaimState", tag = "1")]
    pub state: i32,
    /// For `InFlight` and `Seen`: how long the current entry still lives.
    #[prost(uint64, tag = "2")]
    pub remaining_ms: u64,
    /// For `Claimed`: what settles this claim.
    #[prost(string, tag = "3")]
    pub token: String,
    /// For `InFlight` and `Seen`: the fingerprint the entry was claimed with.
    #[prost(string, tag = "4")]
    pub fingerprint: String,
    /// For `Seen`: the record it was settled with.
    #[prost(bytes = "vec", tag = "5")]
    pub record: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SettleRequest {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub token: String,
    /// Keep the key as seen (the upstream accepted the delivery), or release it.
    #[prost(bool, tag = "3")]
    pub accepted: bool,
    #[prost(uint64, tag = "4")]
    pub keep_ms: u64,
    /// Kept with a seen entry (at most [`MAX_RECORD_BYTES`]).
    #[prost(bytes = "vec", tag = "5")]
    pub record: Vec<u8>,
    /// How the claim is settled ([`SettleOutcome`]; unspecified from older filters: keep when
    /// `accepted`, else release).
    #[prost(enumeration = "SettleOutcome", tag = "6")]
    pub outcome: i32,
    /// The claim's fingerprint, written with the outcome when the engine lost the entry.
    #[prost(string, tag = "7")]
    pub fingerprint: String,
}

/// How a claim is settled, on the wire ([`Settlement`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum SettleOutcome {
    Unspecified = 0,
    Keep = 1,
    Release = 2,
    Lapse = 3,
    Abandon = 4,
}

#[derive(Clone, PartialEq, Message)]
pub struct SettleResponse {
    /// False when the claim was no longer this token's (it expired, and perhaps another
    /// request claimed the key since): nothing was changed.
    #[prost(bool, tag = "1")]
    pub settled: bool,
}

/// What a claim answered, for a filter to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Claimed { token: String },
    InFlight { remaining_ms: u64, fingerprint: String },
    Seen { fingerprint: String, record: Vec<u8> },
}

/// What the engine answered to a settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleAnswer {
    /// The outcome is recorded.
    Settled,
    /// The key is held by another claim: this outcome cannot be recorded (the engine lost
    /// the claim and another request took the key).
    Conflict,
    /// No answer (engine unreachable, storage down, malformed answer): send it again.
    Failed,
}

/// Reads the engine's answer to a settle.
pub fn settle_answer(response: &GrpcResponse) -> SettleAnswer {
    if response.status != 0 {
        return SettleAnswer::Failed;
    }
    match SettleResponse::decode(response.message.as_slice()) {
        Ok(r) if r.settled => SettleAnswer::Settled,
        Ok(_) => SettleAnswer::Conflict,
        Err(_) => SettleAnswer::Failed,
    }
}

/// Decodes a claim answer; `None` for anything malformed (the caller fails closed).
pub fn decode_claim(bytes: &[u8]) -> Option<Claim> {
    let response = ClaimResponse::decode(bytes).ok()?;
    match ClaimState::try_from(response.state).ok()? {
        ClaimState::Claimed if !response.token.is_empty() => Some(Claim::Claimed { token: response.token }),
        ClaimState::InFlight => Some(Claim::InFlight { remaining_ms: response.remaining_ms, fingerprint: response.fingerprint }),
        ClaimState::Seen => Some(Claim::Seen { fingerprint: response.fingerprint, record: response.record }),
        ClaimState::Claimed | ClaimState::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `envoy.config.core.v3.GrpcService`, as much of it as Envoy reads from a call's target.
    #[derive(Clone, PartialEq, Message)]
    struct GrpcService {
        #[prost(message, optional, tag = "1")]
        envoy_grpc: Option<EnvoyGrpc>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct EnvoyGrpc {
        #[prost(string, tag = "1")]
        cluster_name: String,
        #[prost(string, tag = "2")]
        authority: String,
    }

    #[test]
    fn every_cluster_name_reaches_envoy_as_a_grpc_service_naming_it() {
        // `meshward-fleet` parses as a GrpcService with no target (Envoy aborts on it), and so
        // can any name: the target always is a serialized service.
        assert_eq!(GrpcService::decode(b"meshward-fleet".as_slice()).map(|s| s.envoy_grpc), Ok(None));
        let longest = "c".repeat(meshward_host::MAX_GRPC_CLUSTER_NAME);
        for name in ["meshward-fleet", "fleet", "rls", "outbound|8081||meshward-fleet.mesh.svc.cluster.local", "flotte-é", longest.as_str()] {
            let target = meshward_host::grpc_target(name).unwrap();
            let grpc = GrpcService::decode(target.as_bytes()).unwrap().envoy_grpc.unwrap();
            assert_eq!((grpc.cluster_name.as_str(), grpc.authority.as_str()), (name, "meshward-fleet"), "{name}");
        }
        assert_eq!(meshward_host::grpc_target(""), None);
        assert_eq!(meshward_host::grpc_target(&format!("{longest}c")), None);
        // Configurations refuse what has no target.
        let raw = |cluster: String| RawFleetService { cluster, namespace: "n".into(), timeout: None, failure_mode: None };
        assert!(FleetService::compile("fleet", raw("meshward-fleet".into()), FailureMode::Deny).is_ok());
        let error = FleetService::compile("fleet", raw(format!("{longest}c")), FailureMode::Deny).unwrap_err();
        assert_eq!(error.path, "fleet.cluster");
        assert!(error.message.contains("at most 109 bytes"), "{error}");
        assert_eq!(FleetService::compile("fleet", raw(" ".into()), FailureMode::Deny).unwrap_err().path, "fleet.cluster");
    }

    #[test]
    fn claim_answers_decode_or_refuse() {
        let answer = |state: ClaimState, token: &str| {
            ClaimResponse { state: state as i32, remaining_ms: 1500, token: token.into(), fingerprint: "fp".into(), record: b"r".to_vec() }
                .encode_to_vec()
        };
        assert_eq!(decode_claim(&answer(ClaimState::Claimed, "t1")), Some(Claim::Claimed { token: "t1".into() }));
        assert_eq!(decode_claim(&answer(ClaimState::InFlight, "")), Some(Claim::InFlight { remaining_ms: 1500, fingerprint: "fp".into() }));
        assert_eq!(decode_claim(&answer(ClaimState::Seen, "")), Some(Claim::Seen { fingerprint: "fp".into(), record: b"r".to_vec() }));
        // A claim without a token could never be settled; an unknown state is not a yes.
        assert_eq!(decode_claim(&answer(ClaimState::Claimed, "")), None);
        assert_eq!(decode_claim(&answer(ClaimState::Unspecified, "")), None);
        assert_eq!(decode_claim(&ClaimResponse { state: 9, token: "x".into(), ..Default::default() }.encode_to_vec()), None);
        assert_eq!(decode_claim(b"\xff\xff"), None);
    }
}
