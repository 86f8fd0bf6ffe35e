//! The GraphQL policy's configuration: the endpoint, the persisted operations (the allowlist)
//! and the limits, parsed strictly; every persisted document is checked against the limits once.
//!
//! ```json
//! {"paths": ["/graphql"],
//!  "persisted": [{"document": "query Book($id: ID!) { book(id: $id) { title } }"},
//!                {"id": "relay-1f2e", "document": "..."}],
//!  "allow_raw_documents": false, "max_depth": 8, "max_aliases": 10, "max_batch": 1,
//!  "introspection": false,
//!  "schema": "type Query { ... }", "max_cost": 1000, "default_list_size": 10}
//! ```
//!
//! With `schema` (the service's SDL; `schema_file` in a policy), every operation selects only
//! declared fields, costs at most `max_cost` and selects scoped fields only for callers holding
//! the scopes (see [`crate::schema`]).

use std::collections::HashMap;

use meshward_core::config::{body_limit, parse_json, ConfigError};
use meshward_core::Mode;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::document::{check_document, Limits, OperationInfo};
use crate::schema::Schema;
use crate::GraphqlError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    #[serde(default = "default_paths")]
    paths: Vec<String>,
    #[serde(default)]
    persisted: Vec<RawPersisted>,
    #[serde(default)]
    allow_raw_documents: bool,
    max_depth: Option<usize>,
    max_aliases: Option<usize>,
    max_batch: Option<usize>,
    max_directives: Option<usize>,
    #[serde(default)]
    introspection: bool,
    max_body_bytes: Option<usize>,
    schema: Option<String>,
    max_cost: Option<u64>,
    default_list_size: Option<u64>,
}

fn default_paths() -> Vec<String> {
    vec!["/graphql".into()]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersisted {
    /// The id clients send (`id` / `documentId`, Relay); the document's SHA-256 (hex, as Apollo's
    /// `persistedQuery.sha256Hash`) always names it too.
    id: Option<String>,
    document: String,
}

#[derive(Debug, Clone)]
pub struct GraphqlConfig {
    pub mode: Mode,
    /// Request paths the stage reads (exact, canonical); other paths pass.
    pub paths: Vec<String>,
    /// Persisted operations by SHA-256 hex and by id: their index in `documents`.
    pub persisted: HashMap<String, usize>,
    /// The persisted documents, with their operations.
    pub documents: Vec<(String, Vec<OperationInfo>)>,
    pub allow_raw_documents: bool,
    pub limits: Limits,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub schema: Option<Schema>,
    /// The most a request's operations may cost together (with a schema).
    pub max_cost: Option<u64>,
}

/// SHA-256 of a document's text, lower-case hex (Apollo's persisted-query hash).
pub fn sha256_hex(text: &str) -> String {
    meshward_core::hex::encode(&Sha256::digest(text.as_bytes()))
}

impl GraphqlConfig {
    pub fn parse(json: &[u8]) -> Result<GraphqlConfig, ConfigError> {
        let raw: RawConfig = parse_json(json)?;
        let positive = |name: &str, value: Option<usize>, default: usize| match value {
            None => Ok(default),
            Some(0) => Err(ConfigError::new(name, "must be at least 1")),
            Some(n) => Ok(n),
        };
        let limits = Limits {
            max_depth: positive("max_depth", raw.max_depth, 10)?,
            max_aliases: positive("max_aliases", raw.max_aliases, 15)?,
            introspection: raw.introspection,
            max_directives: positive("max_directives", raw.max_directives, 10)?,
            default_list_size: match raw.default_list_size {
                Some(0) => return Err(ConfigError::new("default_list_size", "must be at least 1")),
                n => n.unwrap_or(10),
            },
        };
        let schema = raw.schema.as_deref().map(Schema::parse).transpose()?;
        if schema.is_none() && (raw.max_cost.is_some() || raw.default_list_size.is_some()) {
            let name = if raw.max_cost.is_some() { "max_cost" } else { "default_list_size" };
            return Err(ConfigError::new(name, "costs are read from the schema: give `schema` too"));
        }
        if raw.max_cost == Some(0) {
            return Err(ConfigError::new("max_cost", "must be at least 1"));
        }
        let max_batch = positive("max_batch", raw.max_batch, 1)?;
        if raw.paths.is_empty() || raw.paths.iter().any(|p| !p.starts_with('/') || p.contains(['?', '#'])) {
            return Err(ConfigError::new("paths", "name at least one path, each starting with `/` (no query)"));
        }
        if raw.persisted.is_empty() && !raw.allow_raw_documents {
            return Err(ConfigError::new("persisted", "list the persisted operations, or set `allow_raw_documents: true`"));
        }
        let mut persisted = HashMap::new();
        let mut documents = Vec::with_capacity(raw.persisted.len());
        for (i, p) in raw.persisted.into_iter().enumerate() {
            let at = format!("persisted[{i}]");
            // An allowlisted operation obeys the limits too: an operator's mistake is refused here.
            let operations = check_document(&p.document, &limits, schema.as_ref()).map_err(|e| ConfigError::new(format!("{at}.document"), e.denial().message))?;
            // With no variables given (their defaults, else the assumed list sizes).
            for op in &operations {
                let cost = op.cost.of(&serde_json::Map::new()).map_err(|e| ConfigError::new(format!("{at}.document"), e.denial().message))?;
                if let Some(max) = raw.max_cost.filter(|max| cost > *max) {
                    return Err(ConfigError::new(format!("{at}.document"), GraphqlError::TooCostly { cost, max }.denial().message));
                }
            }
            for key in [Some(sha256_hex(&p.document)), p.id].into_iter().flatten() {
                if persisted.insert(key.clone(), i).is_some() {
                    return Err(ConfigError::new(&at, format!("{key:?} names two persisted operations")));
                }
            }
            documents.push((p.document, operations));
        }
        Ok(GraphqlConfig {
            mode: raw.mode,
            paths: raw.paths,
            persisted,
            documents,
            allow_raw_documents: raw.allow_raw_documents,
            limits,
            max_batch,
            max_body_bytes: body_limit("max_body_bytes", raw.max_body_bytes)?,
            schema,
            max_cost: raw.max_cost,
        })
    }
}
