//! Runs meshward policies as a proxy-wasm HTTP filter: one policy (its own module) or an
//! ordered list of them in one module (the bundle).
//!
//! Everything that is the same for every meshward filter lives here, once, a module per concern:
//! - `plan`: what a module runs (one policy, or the bundle's list) and its per-VM callbacks;
//! - `filter`: one request through the stages: the request model built once
//!   ([`meshward_core::RequestState`]), each step settled in its stage's mode (shadow per
//!   stage), bodies buffered for the stages that ask;
//! - `body`: request bodies decoded from their content coding once, coded answers refused;
//! - `body_wait`: how long a request held for its body waits (408 `body_timeout` after);
//! - `audit`: the audit record of each request, made when it ends, sealed into the VM's chain;
//! - `denial_log`: the deny reasons the runtime itself gives ([`RuntimeDenial`]), the local
//!   response, one JSON log line per denial.
//!
//! Counter names, per stage, decision and reason, are declared in `meshward_core::stats`.
//!
//! [`Filter`] holds the logic against the `meshward_host::Host` trait so it is tested with the
//! fake host; the proxy-wasm glue (`proxy`, wasm32 only) only forwards calls.
//!
//! Counters (visible in Envoy's `/stats`; with the `stats_tags` in `envoy/envoy.yaml`,
//! `route` and `reason` become Prometheus labels; allowed decisions are added up in the VM and
//! written every second, denials at once):
//! - `meshward_<stage>_allowed_total[.route.<route>]`
//! - `meshward_<stage>_denied_total[.route.<route>].reason.<reason>`
//! - `meshward_<stage>_shadow_denied_total[.route.<route>].reason.<reason>` (shadow: would have denied)
//!
//! `.route.<route>` appears when the matching rule has a name.
//!
//! Gauge: `<module>_config_info.config.<fingerprint>` is 1 for the configuration the module
//! runs, 0 for the one it ran before (`meshward rollout status` reads which proxies run which).

mod audit;
mod body;
pub mod body_wait;
mod denial_log;
mod filter;
mod plan;
#[cfg(target_arch = "wasm32")]
mod proxy;

pub use audit::Audit;
pub use denial_log::{send_denial, RuntimeDenial};
pub use filter::{Filter, Outcome, Slot, HOLD_HEADERS_ENV};
pub use plan::{AnyPolicy, Plan, Single};
#[cfg(target_arch = "wasm32")]
pub use proxy::register;

/// What the proxy should do with the request after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Wait: a call is in flight, the body is being buffered, or a local response was sent.
    Pause,
}
