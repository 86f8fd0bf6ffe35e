//! Idempotency keys (the IETF `Idempotency-Key` header draft, as payment APIs apply it): an
//! operation that must not run twice because a client retried requires the header; the first
//! request with a key runs, a copy meanwhile waits (409), a retry afterwards gets the first
//! answer back without reaching the service, and a key reused for another request is refused
//! (422). Keys live in the fleet engine, so every replica of the service agrees.

pub mod config;
mod error;
pub mod key;
pub mod record;
mod stage;

pub use config::IdempotencyConfig;
pub use error::IdempotencyError;
pub use stage::{IdempotencyPolicy, IdempotencyStage};
