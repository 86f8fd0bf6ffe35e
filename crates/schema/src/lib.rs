//! OpenAPI contract enforcement: the document rewritten into JSON Schema 2020-12
//! ([`openapi`]), compiled once into per-operation validators ([`config`]), and the checks
//! ([`validate`]) wired as a [`meshward_core::Policy`] ([`stage`]).
//!
//! Why a request was refused: [`validate`]; every reason is a [`SchemaError`] variant.

pub mod config;
pub mod drift;
mod error;
pub mod form;
pub mod openapi;
pub mod response;
pub mod stage;
pub mod validate;

pub use config::SchemaConfig;
pub use error::SchemaError;
pub use stage::{SchemaPolicy, SchemaStage};
