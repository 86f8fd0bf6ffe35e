//! OpenAPI contract enforcement. `meshward compile` ([`compile`], the `compile` feature: the
//! CLI) rewrites the document into JSON Schema 2020-12 views ([`openapi`]) and lowers every
//! schema into a table ([`program`], [`lower`]); the module loads that contract ([`config`]),
//! runs its schemas ([`validator`], [`format`]) and the checks ([`validate`]) wired as a
//! [`meshward_core::Policy`] ([`stage`]).
//!
//! Why a request was refused: [`validate`]; every reason is a [`SchemaError`] variant.

#[cfg(feature = "compile")]
pub mod compile;
pub mod config;
pub mod drift;
mod error;
pub mod form;
pub mod format;
#[cfg(feature = "compile")]
pub mod lower;
#[cfg(feature = "compile")]
pub mod openapi;
pub mod program;
pub mod response;
pub mod stage;
pub mod validate;
pub mod validator;

pub use config::SchemaConfig;
pub use error::SchemaError;
pub use stage::{SchemaPolicy, SchemaStage};
