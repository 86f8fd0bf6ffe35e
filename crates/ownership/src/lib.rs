//! Object-level (BOLA / IDOR) and function-level authorization against the principal the JWT
//! stage verified: configuration ([`config`]), the decisions ([`decide`]), and the
//! [`meshward_core::Policy`] wiring ([`stage`]).
//!
//! Why a request was refused is decided in [`decide`]; every reason is an
//! [`OwnershipError`] variant.

pub mod config;
pub mod decide;
mod error;
pub mod stage;

pub use config::OwnershipConfig;
pub use error::OwnershipError;
pub use stage::{OwnershipPolicy, OwnershipStage};
