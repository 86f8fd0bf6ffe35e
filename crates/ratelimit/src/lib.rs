//! Per-principal rate limits: configuration ([`config`]), the algorithm ([`gcra`]), the
//! rate-limit service protocol ([`rls`]) and the [`meshward_core::Policy`] wiring ([`stage`]).
//!
//! Why a request was refused: [`gcra::decide`] for local rules, the service's answer for global
//! ones; every reason is a [`RateLimitError`] variant.

pub mod config;
mod error;
pub mod gcra;
pub mod rls;
pub mod stage;

pub use config::RateLimitConfig;
pub use error::RateLimitError;
pub use stage::{RateLimitPolicy, RateLimitStage};
