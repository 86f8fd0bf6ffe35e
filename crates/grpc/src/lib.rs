//! gRPC contracts in the sidecar: the service's protobuf descriptor set says which methods
//! exist and what their requests hold; the policy says which are offered and to whom.
//! Configuration ([`config`]), framing ([`framing`]), the service's protovalidate field rules
//! ([`rules`]), the decisions ([`decide`]) and the [`meshward_core::Policy`] wiring ([`stage`]).
//!
//! Why a call was refused is decided in [`decide`]; every reason is a [`GrpcError`] variant,
//! answered as a gRPC status (the runtime answers gRPC calls trailers-only).

pub mod config;
pub mod decide;
mod error;
pub mod framing;
pub mod rules;
pub mod stage;

pub use config::GrpcConfig;
pub use error::GrpcError;
pub use stage::{GrpcPolicy, GrpcStage};
