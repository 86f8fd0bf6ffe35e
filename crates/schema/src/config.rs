//! The schema filter's configuration as the module loads it: a contract `meshward compile`
//! made from the OpenAPI document ([`crate::program`]), checked whole at load.

use std::sync::Arc;

use meshward_core::config::{from_json, read_json, ConfigError};
use meshward_core::route::PathTemplate;
use meshward_core::Mode;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::form::FormField;
use crate::program::{Node, NodeId, TagNode, CONTRACT_VERSION};
use crate::response::{FieldRules, TagTable};
use crate::validator::{Schema, SchemaTable};

/// The operations an OpenAPI path item may hold.
pub const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum In {
    Path,
    Query,
    Header,
}

/// The JSON type a parameter's text is read as before validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scalar {
    String,
    Integer,
    Number,
    Boolean,
    /// An object in a form field: JSON text (OpenAPI's default `contentType` for objects).
    Json,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    pub name: String,
    pub location: In,
    pub required: bool,
    /// `allowEmptyValue`: a required parameter may be given empty (`?q=`).
    pub allow_empty: bool,
    pub scalar: Scalar,
    /// `type: array` (query: repeated or comma-separated values).
    pub array: bool,
    pub validator: Schema,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// `application/json`, `application/*+json`, `*/*`, ...
    pub media_type: String,
    pub format: BodyFormat,
    /// The schema, for the formats meshward reads (JSON and forms).
    pub validator: Option<Schema>,
    /// How each field of a form body is read (its property's type).
    pub fields: Vec<FormField>,
}

/// How a body of a declared media type is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// Read by the strict JSON reader and validated.
    Json,
    /// `application/x-www-form-urlencoded`, read into its schema's object and validated.
    UrlEncoded,
    /// `multipart/form-data`, read into its schema's object and validated.
    Multipart,
    /// Nothing to check: no schema, or a plain (binary) string. The body streams on.
    Unchecked,
    /// A schema meshward cannot check (XML, ...): refused (415 `unchecked_media_type`) unless
    /// the operation lists the media type in `unchecked_media_types`.
    Unreadable { allowed: bool },
}

/// Which answers a declared response covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusKey {
    Code(u16),
    /// `2XX`: the hundreds digit.
    Class(u16),
    Default,
}

/// One declared answer body: its media type and what the checks need of it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseMedia {
    pub media_type: String,
    /// Present when answers are validated and the media type is JSON.
    pub validator: Option<Schema>,
    /// The schema as written, in [`ResponseChecks::tags`]: where tagged fields are found.
    pub tags: Option<NodeId>,
    /// The schema can hold a stripped or blocked field.
    pub may_tag: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub status: StatusKey,
    pub media: Vec<ResponseMedia>,
}

/// Response checks, compiled.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseChecks {
    pub validate: bool,
    pub fields: FieldRules,
    pub max_body_bytes: usize,
    /// The answers' schemas as written (tags and structure); attached at load.
    #[serde(skip)]
    pub tags: Arc<TagTable>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// `operationId`, or `METHOD /path` when the spec has none.
    pub id: String,
    pub method: String,
    #[serde(serialize_with = "template_out", deserialize_with = "template_in")]
    pub template: PathTemplate,
    /// Literal segments: a literal path (`/users/me`) wins over a template (`/users/{id}`).
    pub literal_segments: usize,
    pub params: Vec<Param>,
    pub body_required: bool,
    /// Empty: the operation takes no body.
    pub media: Vec<Media>,
    /// Declared answers; empty unless response checks are on.
    pub responses: Vec<Response>,
}

fn template_out<S: Serializer>(t: &PathTemplate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

fn template_in<'de, D: Deserializer<'de>>(d: D) -> Result<PathTemplate, D::Error> {
    let text = String::deserialize(d)?;
    PathTemplate::parse(&text).map_err(serde::de::Error::custom)
}

pub struct SchemaConfig {
    pub mode: Mode,
    pub max_body_bytes: usize,
    pub max_depth: usize,
    /// Most literal first.
    pub operations: Vec<Operation>,
    pub response: Option<ResponseChecks>,
    /// Base paths of the document's `servers[].url` (`/api/v3`), without trailing slash.
    pub base_paths: Vec<String>,
}

impl std::fmt::Debug for SchemaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SchemaConfig({} operations)", self.operations.len())
    }
}

/// A compiled contract, as `meshward compile` writes it under `contract`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub version: u32,
    pub max_body_bytes: usize,
    pub max_depth: usize,
    pub base_paths: Vec<String>,
    pub operations: Vec<Operation>,
    pub response: Option<ResponseChecks>,
    /// Every schema the operations use, by index.
    pub schemas: Vec<Node>,
    /// Regexes (`pattern`, `patternProperties`), translated from ECMA-262 by the CLI.
    pub patterns: Vec<String>,
    /// The answers' schemas as written, for the response checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagNode>,
}

/// The stage configuration the module loads.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Compiled {
    #[serde(default)]
    mode: Mode,
    contract: Contract,
}

impl SchemaConfig {
    /// A stage configuration: a compiled contract; with the `compile` feature (the CLI, tests)
    /// also the OpenAPI document as written, compiled first.
    pub fn parse(json: &[u8]) -> Result<SchemaConfig, ConfigError> {
        #[cfg(feature = "compile")]
        if crate::compile::is_source(json) {
            return SchemaConfig::load_document(&crate::compile::compile(json)?);
        }
        SchemaConfig::load(json)
    }

    /// A compiled contract, checked whole.
    pub fn load(json: &[u8]) -> Result<SchemaConfig, ConfigError> {
        SchemaConfig::load_document(&read_json(json)?)
    }

    /// A compiled contract's JSON, checked whole: its version and whether it is one at all
    /// first, so a contract of another layout is named as such.
    fn load_document(document: &Value) -> Result<SchemaConfig, ConfigError> {
        let version = |c: &Value| c.get("version").and_then(Value::as_u64);
        match document.get("contract") {
            None if document.get("openapi").is_some() || document.get("openapi_text").is_some() => {
                return Err(ConfigError::new(
                    "openapi",
                    "this module runs compiled contracts: `meshward compile` (or `render`) turns the OpenAPI document into the `contract` the module loads",
                ))
            }
            None => return Err(ConfigError::new("contract", "is required (`meshward compile` writes it)")),
            Some(contract) if version(contract) != Some(u64::from(CONTRACT_VERSION)) => {
                return Err(ConfigError::new(
                    "contract.version",
                    format!(
                        "{} is not this module's contract version {CONTRACT_VERSION}: compile it with the meshward of the module's release",
                        version(contract).map_or_else(|| "none".to_string(), |v| v.to_string())
                    ),
                ))
            }
            Some(_) => {}
        }
        let Compiled { mode, contract } = from_json(document)?;
        let table = Arc::new(SchemaTable::new(contract.schemas, &contract.patterns).map_err(|e| ConfigError::new("contract", e))?);
        let tags = Arc::new(TagTable::new(contract.tags).map_err(|e| ConfigError::new("contract.tags", e))?);
        let mut operations = contract.operations;
        for op in &mut operations {
            let at = |e: String| ConfigError::new(format!("contract.operations.{}", op.id), e);
            for p in &mut op.params {
                p.validator.attach(&table).map_err(at)?;
            }
            for m in &mut op.media {
                if let Some(v) = &mut m.validator {
                    v.attach(&table).map_err(at)?;
                }
            }
            for r in &mut op.responses {
                for m in &mut r.media {
                    if let Some(v) = &mut m.validator {
                        v.attach(&table).map_err(at)?;
                    }
                    if m.tags.is_some_and(|t| t as usize >= tags.len()) {
                        return Err(at("a response names a tag schema past the table".into()));
                    }
                }
            }
        }
        let mut response = contract.response;
        if let Some(r) = &mut response {
            r.tags = tags;
        }
        Ok(SchemaConfig {
            mode,
            max_body_bytes: contract.max_body_bytes,
            max_depth: contract.max_depth,
            operations,
            response,
            base_paths: contract.base_paths,
        })
    }
}
