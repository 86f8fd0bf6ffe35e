//! The fleet-state client's wire: what a filter asks `meshward-fleet` (the engine every sidecar
//! of a service shares) over gRPC through an Envoy cluster. The engine keeps each key in Redis;
//! atomic insert-if-absent and expiry are Redis's.
//!
//! A seen-set entry walks two states: a delivery is *claimed* (in flight, held for `hold_ms`)
//! while the upstream handles it, then *settled*: kept as seen for `keep_ms` when the upstream
//! accepted it, removed when it did not (so the sender's retry passes). Only the holder of the
//! claim's token can settle it.

use std::time::Duration;

use meshward_host::{Host, HostError};
use prost::Message;
use serde::Deserialize;

use crate::config::{check_name, parse_duration, ConfigError};
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
        if raw.cluster.trim().is_empty() {
            return Err(ConfigError::new(format!("{path}.cluster"), "must name the Envoy cluster of the fleet engine"));
        }
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

    /// Asks to claim `key` (under this service's namespace) for `hold`; `fingerprint` is kept
    /// with the entry and answered to later claims (empty: none).
    pub fn claim(&self, host: &mut dyn Host, key: &str, fingerprint: &str, hold: Duration) -> Result<u32, HostError> {
        let message =
            ClaimRequest { key: format!("{}/{key}", self.namespace), hold_ms: millis(hold), fingerprint: fingerprint.to_string() }
                .encode_to_vec();
        host.dispatch_grpc_call(&self.cluster, SEEN_SET_SERVICE, CLAIM_METHOD, &message, self.timeout)
    }

    /// Settles a claim: keep `key` as seen for `keep`, with `record` (what a later claim is
    /// answered; may be empty), or release it.
    pub fn settle(&self, host: &mut dyn Host, key: &str, token: &str, settlement: Settlement) -> Result<u32, HostError> {
        let (accepted, keep, record) = match settlement {
            Settlement::Keep { keep, record } => (true, keep, record),
            Settlement::Release => (false, Duration::from_millis(1), Vec::new()),
        };
        let message =
            SettleRequest { key: format!("{}/{key}", self.namespace), token: token.to_string(), accepted, keep_ms: millis(keep), record }
                .encode_to_vec();
        host.dispatch_grpc_call(&self.cluster, SEEN_SET_SERVICE, SETTLE_METHOD, &message, self.timeout)
    }
}

/// How a claim is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Seen for `keep`, with what to answer later claims.
    Keep { keep: Duration, record: Vec<u8> },
    /// Forgotten: the next claim is granted.
    Release,
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

/// Whether the engine's answer to a settle says it was done: a failed call, a malformed
/// answer, and a claim no longer ours (it had expired) all say no.
pub fn settled(response: &GrpcResponse) -> bool {
    response.status == 0 && SettleResponse::decode(response.message.as_slice()).is_ok_and(|r| r.settled)
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
