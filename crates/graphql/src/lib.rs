//! GraphQL in the sidecar: only persisted operations run (by Apollo's `persistedQuery` hash or a
//! Relay-style id), raw documents only where allowed and then within depth, alias and batch
//! limits, introspection off. Configuration ([`config`]), the document analysis ([`document`],
//! Apollo's parser), the decisions ([`decide`]) and the [`meshward_core::Policy`] wiring
//! ([`stage`]).
//!
//! Why a request was refused is decided in [`decide`]; every reason is a [`GraphqlError`].

pub mod config;
pub mod decide;
pub mod document;
mod error;
pub mod schema;
pub mod stage;

pub use config::GraphqlConfig;
pub use error::GraphqlError;
pub use stage::{GraphqlPolicy, GraphqlStage};
