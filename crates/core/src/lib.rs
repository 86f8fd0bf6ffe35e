//! What every meshward policy shares.
//!
//! - [`Principal`]: who is calling, as the JWT stage verified it, and how it travels between
//!   filters (Envoy filter state, never a client header).
//! - [`caller`]: who is calling (user, workload) and what a rule asks of them, checked once.
//! - [`workload`]: the calling workload (east-west), from its verified mTLS certificate.
//! - [`Denial`]: why a request is refused, and the HTTP response that says so.
//! - [`route`]: canonical request paths and the `match` rules policies use.
//! - [`Policy`] / [`Stage`]: the trait every policy implements, so one runtime can drive any
//!   policy alone (its own module) or several in one module.
//! - [`request`]: the one request model (method, canonical path, headers, framing, decoded
//!   body, JSON read once by the strict [`json`] reader) every stage reads.
//! - [`audit`]: audit records and their hash chain (sealed here, verified by `meshward audit verify`).
//! - [`fleet`] / [`unsettled`]: the fleet engine's wire, and the outcomes it did not confirm yet.
//! - [`config`]: strict JSON configuration parsing with errors that name the field.

pub mod audit;
pub mod caller;
pub mod clock;
pub mod config;
pub mod config_de;
pub mod denial;
pub mod fleet;
pub mod form;
pub mod hex;
pub mod json;
pub mod principal;
pub mod request;
pub mod route;
pub mod shared;
pub mod stats;
pub mod stage;
pub mod unsettled;
pub mod workload;

pub use denial::{Denial, DenialKind, GrpcCode};
pub use principal::{Principal, PRINCIPAL_PROPERTY};
pub use stage::{GrpcResponse, Mode, Policy, Reply, RequestState, Stage, Step};
