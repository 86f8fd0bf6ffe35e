//! JWT authentication, as pure logic: configuration ([`config`]), key sets ([`jwks`]),
//! verification of one token ([`verify`]), and the per-request decision ([`authn`]).
//! [`stage`] wires it to a [`meshward_host::Host`] as a [`meshward_core::Policy`].
//!
//! Why a request was denied is decided in [`authn::authenticate`]; every reason is a
//! [`JwtError`] variant.

pub mod authn;
pub mod cache;
pub mod config;
mod error;
pub mod jwks;
pub mod native;
pub mod revocation;
pub mod shared_jwks;
pub mod stage;
#[cfg(any(all(test, feature = "signatures"), feature = "testkit"))]
pub mod testkit;
pub mod verify;

pub use config::JwtConfig;
pub use error::JwtError;
pub use stage::{JwtPolicy, JwtStage};
