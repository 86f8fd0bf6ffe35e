//! `meshward compile` for the schema stage (the `compile` feature: the CLI, never the module):
//! the stage configuration as written (the OpenAPI document and the limits) becomes the
//! [`Contract`] the module runs. Every schema is first checked and compiled by the jsonschema
//! crate (meta-validation, `$ref` resolution: what it refuses, `compile` refuses), then
//! lowered to [`Node`]s ([`crate::lower`]).

use std::collections::BTreeMap;

use jsonschema::Validator;
use meshward_core::config::{body_limit, parse_json, ConfigError};
use meshward_core::route::PathTemplate;
use meshward_core::request::essence;
use meshward_core::Mode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{BodyFormat, Contract, In, Media, Operation, Param, Response, ResponseChecks, ResponseMedia, Scalar, StatusKey, METHODS};
use crate::form::FormField;
use crate::lower::{Lowering, TagLowering};
use crate::openapi::{check_refs, resolve, rewrite_document, View};
use crate::validator::escape;
use crate::program::CONTRACT_VERSION;
use crate::response::{FieldAction, FieldRules, TagTable, REQUIRED_SCOPE};
use crate::validator::Schema;

const DEFAULT_MAX_DEPTH: usize = 32;

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
    /// Response checks; absent: answers pass unread.
    response: Option<RawResponse>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    /// Validate 2xx JSON answers against the declared response schema.
    #[serde(default)]
    validate: bool,
    /// What happens to `writeOnly` fields in answers (default: strip).
    write_only: Option<FieldAction>,
    /// `x-data-class` value → strip or block.
    #[serde(default)]
    data_classes: BTreeMap<String, FieldAction>,
    /// What happens to a field whose `x-required-scope` the caller lacks (default: strip).
    required_scope: Option<FieldAction>,
    max_body_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    reject_unknown_properties: Option<bool>,
    /// Declared media types whose schema meshward cannot check (XML, ...) that may pass
    /// unchecked on this operation (counted as `meshward_schema_unchecked_body_total`).
    #[serde(default)]
    unchecked_media_types: Vec<String>,
}

impl StatusKey {
    fn parse(key: &str) -> Option<StatusKey> {
        let upper = key.to_ascii_uppercase();
        if upper == "DEFAULT" {
            return Some(StatusKey::Default);
        }
        if let Some(digit) = upper.strip_suffix("XX") {
            return digit.parse().ok().filter(|d| (1..=5).contains(d)).map(StatusKey::Class);
        }
        upper.parse().ok().filter(|c| (100..=599).contains(c)).map(StatusKey::Code)
    }
}

/// How a declared request body is checked (see [`BodyFormat`]).
fn body_format(document: &Value, media_type: &str, schema: Option<&Value>, unchecked: &[String]) -> BodyFormat {
    let Some(schema) = schema else { return BodyFormat::Unchecked };
    if is_json(media_type) {
        return BodyFormat::Json;
    }
    match essence(media_type).as_str() {
        "application/x-www-form-urlencoded" => return BodyFormat::UrlEncoded,
        "multipart/form-data" => return BodyFormat::Multipart,
        _ => {}
    }
    // A string (binary upload, plain text) constrains nothing a reader would disagree on.
    let resolved = resolve(document, schema);
    let plain_string = resolved.as_object().is_some_and(|m| {
        m.get("type") == Some(&json!("string")) && m.keys().all(|k| matches!(k.as_str(), "type" | "format" | "description" | "title" | "example" | "examples"))
    });
    if plain_string || resolved == &json!({}) || resolved == &json!(true) {
        return BodyFormat::Unchecked;
    }
    BodyFormat::Unreadable { allowed: unchecked.iter().any(|u| u.eq_ignore_ascii_case(media_type)) }
}

/// The fields of a form schema (its properties, and those of `allOf` members) with the type
/// their text is read as.
fn form_fields(document: &Value, schema: &Value) -> Vec<FormField> {
    let resolved = resolve(document, schema);
    let mut schemas = vec![resolved];
    if let Some(Value::Array(members)) = resolved.get("allOf") {
        schemas.extend(members.iter().map(|m| resolve(document, m)));
    }
    let mut fields: Vec<FormField> = Vec::new();
    for s in schemas {
        if let Some(Value::Object(props)) = s.get("properties") {
            for (name, prop) in props {
                let (mut scalar, array) = scalar_of(document, prop);
                let inner = resolve(document, prop);
                let inner = if array { inner.get("items").map_or(inner, |i| resolve(document, i)) } else { inner };
                if inner.get("type") == Some(&json!("object")) || inner.get("properties").is_some() {
                    scalar = Scalar::Json;
                }
                if !fields.iter().any(|f| f.name == *name) {
                    fields.push(FormField { name: name.clone(), scalar, array });
                }
            }
        }
    }
    fields
}

/// The path part of each top-level `servers[].url` (variables replaced by their defaults),
/// so a contract served under `/api/v3` matches `/api/v3/pet`. Root and empty bases are left
/// out: paths without a base always match too.
fn base_paths(document: &Value) -> Vec<String> {
    let Some(Value::Array(servers)) = document.get("servers") else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    for server in servers {
        let Some(mut url) = server.get("url").and_then(Value::as_str).map(str::to_string) else { continue };
        if let Some(Value::Object(vars)) = server.get("variables") {
            for (name, var) in vars {
                if let Some(default) = var.get("default").and_then(Value::as_str) {
                    url = url.replace(&format!("{{{name}}}"), default);
                }
            }
        }
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
            None => url.as_str(),
        };
        let path = path.split(['?', '#']).next().unwrap_or("").trim_end_matches('/');
        if path.starts_with('/') && !path.contains('{') && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
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

/// A copy of `document` holding only what the schema at `pointer` needs: that schema and every
/// local `$ref` it reaches, each at its own pointer, so references resolve as in the whole
/// document. Compiling each validator from the whole document made every compile copy all of
/// it, and the peak stays resident: a VM's memory never shrinks.
fn needed_by(document: &Value, pointer: &str) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    let mut todo = vec![pointer.to_string()];
    let mut done: Vec<String> = Vec::new();
    while let Some(next) = todo.pop() {
        // A pointer inside one already copied is there already.
        if done.iter().any(|d| next == *d || next.starts_with(&format!("{d}/"))) {
            continue;
        }
        let Some(target) = document.pointer(&next) else { continue };
        local_refs(target, &mut todo);
        place(&mut out, &next, target.clone());
        done.push(next);
    }
    out
}

/// Every local `$ref` (`#/...`) inside `value`, as a JSON pointer.
fn local_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                if let Some(pointer) = r.strip_prefix('#') {
                    out.push(pointer_of_fragment(pointer));
                }
            }
            map.values().for_each(|v| local_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| local_refs(v, out)),
        _ => {}
    }
}

/// A `$ref` fragment as a JSON pointer (percent-decoded, as the validator reads it).
pub(crate) fn pointer_of_fragment(fragment: &str) -> String {
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| fragment.to_string())
}

/// Puts `value` at `pointer` inside `root`, making the objects on the way.
fn place(root: &mut Value, pointer: &str, value: Value) {
    let mut at = root;
    let tokens: Vec<String> = pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    for (i, token) in tokens.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = at else { return };
        if i + 1 == tokens.len() {
            map.insert(token.clone(), value);
            return;
        }
        at = map.entry(token.clone()).or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    *at = value;
}

/// The jsonschema crate's validator for the schema at `pointer` inside the (rewritten)
/// document. Building it is the meta-validation `compile` refuses on; it is also the reference
/// the lowered schemas are held to (tests/differential.rs).
pub fn reference_validator(document: &Value, pointer: &str) -> Result<Validator, String> {
    let mut root = needed_by(document, pointer);
    if let Value::Object(map) = &mut root {
        map.insert("$ref".into(), Value::String(format!("#{}", fragment(pointer))));
        map.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        // OpenAPI's formats are assertions here (`date-time`, `date`, `uuid`, `email`, `ipv4`,
        // `ipv6`, `uri`, ...): services parse them, and a value they cannot parse is a value
        // the contract did not allow. Formats the validator does not know are annotations.
        .should_validate_formats(true)
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

/// Is this the stage configuration as written (no compiled `contract`)?
pub fn is_source(json: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Outline {
        contract: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Outline>(json).is_ok_and(|o| o.contract.is_none())
}

/// The views schemas are lowered from, by index in [`Lowering`].
const OPEN: usize = 0;
const CLOSED: usize = 1;
const ANSWERS: usize = 2;

/// A schema checked by the reference validator, then lowered.
fn schema_at(lowering: &mut Lowering<'_>, view: usize, pointer: &str) -> Result<Schema, String> {
    reference_validator(lowering.document(view), pointer)?;
    lowering.lower(view, pointer).map(|id| Schema::new(id, Default::default()))
}

/// The stage configuration as written, compiled into what the module loads:
/// `{"mode": ..., "contract": {...}}`.
pub fn compile(json: &[u8]) -> Result<Value, ConfigError> {
    let raw: RawConfig = parse_json(json)?;
    let document = parse_document(&raw)?;
    let version = document.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !(version.starts_with("3.0.") || version.starts_with("3.1.")) {
        return Err(ConfigError::new("openapi.openapi", format!("{version:?} is not OpenAPI 3.0.x or 3.1.x")));
    }
    check_refs(&document).map_err(|e| ConfigError::new("openapi", e))?;
    let max_body_bytes = body_limit("max_body_bytes", raw.max_body_bytes)?;
    let max_depth = raw.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
    if !(1..=256).contains(&max_depth) {
        return Err(ConfigError::new("max_depth", "must be between 1 and 256"));
    }
    let default_close = raw.reject_unknown_properties.unwrap_or(true);
    let open_view = rewrite_document(&document, &View::request(false));
    let closed_view = rewrite_document(&document, &View::request(true));
    let (response, answers_view) = match &raw.response {
        Some(r) => {
            let (checks, view) = response_checks(&document, r)?;
            (Some(checks), Some(view))
        }
        // Fields only some callers may read would leave whole, to every caller.
        None if mentions_key(&document, REQUIRED_SCOPE, 0) => {
            return Err(ConfigError::new(
                "response",
                "the contract tags fields with x-required-scope: configure `response` (at least `{}`) so answers are read",
            ))
        }
        None => (None, None),
    };
    let empty = Value::Null;
    let mut lowering = Lowering::new(vec![&open_view, &closed_view, answers_view.as_ref().unwrap_or(&empty)]);
    let mut tags = TagLowering::new(&document);
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
            let view = if close { CLOSED } else { OPEN };
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
                let validator = schema_at(&mut lowering, view, &format!("{pointer}/schema")).map_err(|e| ConfigError::new(&at_op, e))?;
                params.push(Param {
                    name: if location == In::Header { name.to_ascii_lowercase() } else { name },
                    location,
                    required: location == In::Path || p.get("required") == Some(&Value::Bool(true)),
                    allow_empty: p.get("allowEmptyValue") == Some(&Value::Bool(true)),
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
                    let unchecked = raw.operations.get(&id).map(|o| o.unchecked_media_types.as_slice()).unwrap_or_default();
                    for listed in unchecked {
                        if !content.keys().any(|m| m.eq_ignore_ascii_case(listed)) {
                            return Err(ConfigError::new(format!("operations.{id}.unchecked_media_types"), "names a media type the operation does not declare"));
                        }
                    }
                    for (media_type, m) in content {
                        let format = body_format(&document, media_type, m.get("schema"), unchecked);
                        let validator = match format {
                            BodyFormat::Json | BodyFormat::UrlEncoded | BodyFormat::Multipart => Some(
                                schema_at(&mut lowering, view, &format!("{pointer}/content/{}/schema", escape(media_type)))
                                    .map_err(|e| ConfigError::new(&at_op, e))?,
                            ),
                            BodyFormat::Unchecked | BodyFormat::Unreadable { .. } => None,
                        };
                        let fields = match (format, m.get("schema")) {
                            (BodyFormat::UrlEncoded | BodyFormat::Multipart, Some(schema)) => form_fields(&document, schema),
                            _ => Vec::new(),
                        };
                        media.push(Media { media_type: media_type.to_ascii_lowercase(), format, validator, fields });
                    }
                }
            }
            let responses = match &response {
                Some(checks) => responses_of(&document, checks, &mut lowering, &mut tags, op, &op_pointer).map_err(|e| ConfigError::new(&at_op, e))?,
                None => Vec::new(),
            };
            operations.push(Operation {
                id,
                method: method.to_uppercase(),
                template: template.clone(),
                literal_segments,
                params,
                body_required,
                media,
                responses,
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
    let base_paths = base_paths(&document);
    // Whether an answer can carry a tagged field, decided on the finished tag table.
    let tags = tags.finish();
    if let Some(checks) = &response {
        let table = TagTable::new(tags.clone()).map_err(|e| ConfigError::new("openapi", e))?;
        for m in operations.iter_mut().flat_map(|o| o.responses.iter_mut()).flat_map(|r| r.media.iter_mut()) {
            m.may_tag = m.tags.is_some_and(|t| checks.fields.may_tag(&table, t));
            if !m.may_tag {
                m.tags = None;
            }
        }
    }
    let (schemas, patterns) = lowering.finish();
    let contract = Contract { version: CONTRACT_VERSION, max_body_bytes, max_depth, base_paths, operations, response, schemas, patterns, tags };
    serde_json::to_value(&contract)
        .map(|contract| json!({"mode": raw.mode, "contract": contract}))
        .map_err(|e| ConfigError::new("contract", e.to_string()))
}

/// Whether a key appears anywhere in a document (at most 128 levels deep).
fn mentions_key(value: &Value, key: &str, depth: usize) -> bool {
    match value {
        _ if depth > 128 => false,
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| mentions_key(v, key, depth + 1)),
        Value::Array(items) => items.iter().any(|v| mentions_key(v, key, depth + 1)),
        _ => false,
    }
}

fn response_checks(document: &Value, raw: &RawResponse) -> Result<(ResponseChecks, Value), ConfigError> {
    let max_body_bytes = body_limit("response.max_body_bytes", raw.max_body_bytes)?;
    if let Some(class) = raw.data_classes.keys().find(|c| c.is_empty() || c.len() > 64) {
        return Err(ConfigError::new(format!("response.data_classes.{class}"), "a class name is 1 to 64 characters"));
    }
    let fields = FieldRules {
        write_only: raw.write_only.unwrap_or(FieldAction::Strip),
        classes: raw.data_classes.clone(),
        required_scope: raw.required_scope.unwrap_or(FieldAction::Strip),
    };
    let view = View {
        close: false,
        hide_read_only: false,
        hide_write_only: fields.write_only == FieldAction::Strip,
        hide_classes: fields.stripped_classes(),
        // Present for one caller, cut for another: never required.
        optional_scoped: true,
    };
    Ok((ResponseChecks { validate: raw.validate, fields, max_body_bytes, tags: Default::default() }, rewrite_document(document, &view)))
}

/// The declared answers of one operation (`responses`, following `$ref`s to components).
fn responses_of(
    document: &Value,
    checks: &ResponseChecks,
    lowering: &mut Lowering<'_>,
    tags: &mut TagLowering<'_>,
    op: &Value,
    op_pointer: &str,
) -> Result<Vec<Response>, String> {
    let Some(Value::Object(declared)) = op.get("responses") else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (key, response) in declared {
        let status = StatusKey::parse(key).ok_or_else(|| format!("responses.{key}: not a status code, `2XX` or `default`"))?;
        let (response, pointer) = match response.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            Some(target) => (document.pointer(target).cloned().unwrap_or(Value::Null), target.to_string()),
            None => (response.clone(), format!("{op_pointer}/responses/{}", escape(key))),
        };
        let mut media = Vec::new();
        if let Some(Value::Object(content)) = response.get("content") {
            for (media_type, m) in content {
                let json = is_json(media_type);
                let schema_pointer = m.get("schema").map(|_| format!("{pointer}/content/{}/schema", escape(media_type)));
                let validator = match &schema_pointer {
                    Some(p) if json && checks.validate => Some(schema_at(lowering, ANSWERS, p)?),
                    _ => None,
                };
                let tagged = match &schema_pointer {
                    Some(p) if json => Some(tags.lower(p)?),
                    _ => None,
                };
                media.push(ResponseMedia { media_type: media_type.to_ascii_lowercase(), validator, tags: tagged, may_tag: false });
            }
        }
        out.push(Response { status, media });
    }
    Ok(out)
}

/// `application/json`, `application/problem+json`, `*/*` with a JSON schema...
pub fn is_json(media_type: &str) -> bool {
    let essence = essence(media_type);
    essence == "application/json" || essence.ends_with("+json") || essence == "*/*"
}
