//! The schema filter's configuration: the OpenAPI document and the limits, compiled once into
//! per-operation validators.

use std::collections::BTreeMap;

use jsonschema::Validator;
use meshward_core::config::{parse_json, ConfigError};
use meshward_core::route::PathTemplate;
use meshward_core::Mode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::openapi::{check_refs, request_view};

const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_MAX_DEPTH: usize = 32;
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    /// The OpenAPI document as a JSON object.
    openapi: Option<Value>,
    /// The OpenAPI document as JSON or YAML text.
    openapi_text: Option<String>,
    max_body_bytes: Option<usize>,
    max_depth: Option<usize>,
    /// Refuse properties the schema does not declare on writes (POST/PUT/PATCH).
    reject_unknown_properties: Option<bool>,
    /// Per-operation overrides, by operationId.
    #[serde(default)]
    operations: BTreeMap<String, RawOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    reject_unknown_properties: Option<bool>,
}

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Header,
}

/// The JSON type a parameter's text is read as before validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    Integer,
    Number,
    Boolean,
}

pub struct Param {
    pub name: String,
    pub location: In,
    pub required: bool,
    pub scalar: Scalar,
    /// `type: array` (query: repeated or comma-separated values).
    pub array: bool,
    pub validator: Validator,
}

pub struct Media {
    /// `application/json`, `application/*+json`, `*/*`, ...
    pub media_type: String,
    /// JSON media types are parsed and validated; others are only matched.
    pub validator: Option<Validator>,
}

pub struct Operation {
    /// `operationId`, or `METHOD /path` when the spec has none.
    pub id: String,
    pub method: String,
    pub template: PathTemplate,
    /// Literal segments: a literal path (`/users/me`) wins over a template (`/users/{id}`).
    pub literal_segments: usize,
    pub params: Vec<Param>,
    pub body_required: bool,
    /// Empty: the operation takes no body.
    pub media: Vec<Media>,
}

pub struct SchemaConfig {
    pub mode: Mode,
    pub max_body_bytes: usize,
    pub max_depth: usize,
    pub operations: Vec<Operation>,
}

impl std::fmt::Debug for SchemaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SchemaConfig({} operations)", self.operations.len())
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer as a URI fragment: characters a fragment may not hold are percent-encoded
/// (`{petId}` → `%7BpetId%7D`).
fn fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A validator for the schema at `pointer` inside the (rewritten) document.
fn validator_at(document: &Value, pointer: &str) -> Result<Validator, String> {
    let mut root = document.clone();
    if let Value::Object(map) = &mut root {
        map.insert("$ref".into(), Value::String(format!("#{}", fragment(pointer))));
        map.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .map_err(|e| format!("schema at #{pointer} does not compile: {e}"))
}

/// The parameter's schema type, following one local `$ref`.
fn scalar_of(document: &Value, schema: &Value) -> (Scalar, bool) {
    let resolved = match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => document.pointer(pointer).unwrap_or(schema),
        None => schema,
    };
    let type_of = |s: &Value| match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string").to_string(),
        _ => "string".into(),
    };
    let (t, array) = match type_of(resolved).as_str() {
        "array" => (resolved.get("items").map(&type_of).unwrap_or_else(|| "string".into()), true),
        other => (other.to_string(), false),
    };
    let scalar = match t.as_str() {
        "integer" => Scalar::Integer,
        "number" => Scalar::Number,
        "boolean" => Scalar::Boolean,
        _ => Scalar::String,
    };
    (scalar, array)
}

fn parse_document(raw: &RawConfig) -> Result<Value, ConfigError> {
    match (&raw.openapi, &raw.openapi_text) {
        (Some(doc), None) => Ok(doc.clone()),
        (None, Some(text)) => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('{') {
                serde_json::from_str(text).map_err(|e| ConfigError::new("openapi_text", format!("not valid JSON: {e}")))
            } else {
                serde_yaml::from_str(text).map_err(|e| ConfigError::new("openapi_text", format!("not valid YAML: {e}")))
            }
        }
        _ => Err(ConfigError::new("", "set exactly one of `openapi` (a JSON object) or `openapi_text` (JSON or YAML)")),
    }
}

impl SchemaConfig {
    pub fn parse(json: &[u8]) -> Result<SchemaConfig, ConfigError> {
        let raw: RawConfig = parse_json(json)?;
        let document = parse_document(&raw)?;
        let version = document.get("openapi").and_then(Value::as_str).unwrap_or("");
        if !(version.starts_with("3.0.") || version.starts_with("3.1.")) {
            return Err(ConfigError::new("openapi.openapi", format!("{version:?} is not OpenAPI 3.0.x or 3.1.x")));
        }
        check_refs(&document).map_err(|e| ConfigError::new("openapi", e))?;
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1..=16 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(ConfigError::new("max_body_bytes", "must be between 1 and 16777216"));
        }
        let max_depth = raw.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
        if !(1..=256).contains(&max_depth) {
            return Err(ConfigError::new("max_depth", "must be between 1 and 256"));
        }
        let default_close = raw.reject_unknown_properties.unwrap_or(true);
        let open_view = request_view(&document, false);
        let closed_view = request_view(&document, true);
        let Some(Value::Object(paths)) = document.get("paths") else {
            return Err(ConfigError::new("openapi.paths", "is required"));
        };
        let mut operations = Vec::new();
        let mut seen_ids = Vec::new();
        for (path, item) in paths {
            let at_path = format!("openapi.paths.{path}");
            let template = PathTemplate::parse(path).map_err(|e| ConfigError::new(&at_path, e))?;
            let literal_segments = path.split('/').filter(|s| !s.is_empty() && !s.starts_with('{')).count();
            let shared_params: Vec<Value> = item.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let id = op.get("operationId").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("{} {path}", method.to_uppercase()));
                let is_write = matches!(method, "post" | "put" | "patch");
                let close = is_write && raw.operations.get(&id).and_then(|o| o.reject_unknown_properties).unwrap_or(default_close);
                seen_ids.push(id.clone());
                let view = if close { &closed_view } else { &open_view };
                let at_op = format!("{at_path}.{method}");
                let op_pointer = format!("/paths/{}/{method}", escape(path));
                let mut params = Vec::new();
                let own: Vec<Value> = op.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
                let all: Vec<(String, Value)> = shared_params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("/paths/{}/parameters/{i}", escape(path)), p.clone()))
                    .chain(own.iter().enumerate().map(|(i, p)| (format!("{op_pointer}/parameters/{i}"), p.clone())))
                    .collect();
                for (pointer, p) in all {
                    let (p, pointer) = match p.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
                        Some(target) => (document.pointer(target).cloned().unwrap_or(Value::Null), target.to_string()),
                        None => (p, pointer),
                    };
                    let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                    let location = match p.get("in").and_then(Value::as_str) {
                        Some("path") => In::Path,
                        Some("query") => In::Query,
                        Some("header") => In::Header,
                        _ => continue, // cookies are not checked
                    };
                    if name.is_empty() {
                        return Err(ConfigError::new(&at_op, "a parameter has no name"));
                    }
                    // Operation-level parameters override path-level ones of the same name.
                    params.retain(|x: &Param| !(x.name == name && x.location == location));
                    let schema = p.get("schema").cloned().unwrap_or(json!({}));
                    let (scalar, array) = scalar_of(&document, &schema);
                    let validator = validator_at(view, &format!("{pointer}/schema")).map_err(|e| ConfigError::new(&at_op, e))?;
                    params.push(Param {
                        name: if location == In::Header { name.to_ascii_lowercase() } else { name },
                        location,
                        required: location == In::Path || p.get("required") == Some(&Value::Bool(true)),
                        scalar,
                        array,
                        validator,
                    });
                }
                let body = op.get("requestBody").map(|b| match b.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
                    Some(target) => (document.pointer(target).cloned().unwrap_or(Value::Null), target.to_string()),
                    None => (b.clone(), format!("{op_pointer}/requestBody")),
                });
                let mut media = Vec::new();
                let mut body_required = false;
                if let Some((body, pointer)) = body {
                    body_required = body.get("required") == Some(&Value::Bool(true));
                    if let Some(Value::Object(content)) = body.get("content") {
                        for (media_type, m) in content {
                            let json = is_json(media_type);
                            let validator = if json && m.get("schema").is_some() {
                                Some(
                                    validator_at(view, &format!("{pointer}/content/{}/schema", escape(media_type)))
                                        .map_err(|e| ConfigError::new(&at_op, e))?,
                                )
                            } else {
                                None
                            };
                            media.push(Media { media_type: media_type.to_ascii_lowercase(), validator });
                        }
                    }
                }
                operations.push(Operation {
                    id,
                    method: method.to_uppercase(),
                    template: template.clone(),
                    literal_segments,
                    params,
                    body_required,
                    media,
                });
            }
        }
        if let Some(unknown) = raw.operations.keys().find(|k| !seen_ids.contains(k)) {
            return Err(ConfigError::new(format!("operations.{unknown}"), "is not an operationId of the document"));
        }
        if operations.is_empty() {
            return Err(ConfigError::new("openapi.paths", "declares no operations"));
        }
        // Most literal first, so `/users/me` is tried before `/users/{id}`.
        operations.sort_by_key(|o| std::cmp::Reverse(o.literal_segments));
        Ok(SchemaConfig { mode: raw.mode, max_body_bytes, max_depth, operations })
    }
}

/// `application/json`, `application/problem+json`, `*/*` with a JSON schema...
pub fn is_json(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "*/*"
}
