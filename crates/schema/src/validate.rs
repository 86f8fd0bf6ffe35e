//! Does this request match its operation? Route, parameters and content type from the headers
//! ([`match_operation`], [`check_parameters`], [`check_content_type`]); the JSON body after
//! it is buffered ([`check_body`]).

use meshward_core::json::{Document, JsonError};
use meshward_core::request::essence;
use meshward_core::route::{decode_component, query_of, url_pairs};
use serde_json::Value;

use crate::config::{BodyFormat, In, Media, Operation, Param, Response, ResponseChecks, ResponseMedia, SchemaConfig, StatusKey};
use crate::form::{coerce, read_form};
use meshward_core::form::{form_kind, FormError};
use crate::response::cut_fields;
use crate::validator::Schema;
use crate::SchemaError;

/// Path parameters captured by a template, percent-decoded.
pub type Captures = Vec<(String, String)>;

/// The operation for a method and canonical path (most literal template first), with its
/// path parameters.
/// The path is read under each `servers[].url` base path first (`/api/v3/pet` is `/pet`),
/// then as it is (a proxy in front may have stripped the base).
pub fn match_operation<'a>(config: &'a SchemaConfig, method: &str, canonical: &str) -> Result<(&'a Operation, Captures), SchemaError> {
    let under_base = config.base_paths.iter().filter_map(|base| {
        let head = canonical.get(..base.len()).filter(|h| h.eq_ignore_ascii_case(base))?;
        let rest = &canonical[head.len()..];
        match rest {
            "" => Some("/"),
            r if r.starts_with('/') => Some(r),
            _ => None,
        }
    });
    let mut path_known = false;
    for path in under_base.chain(std::iter::once(canonical)) {
        for op in &config.operations {
            if let Some(captures) = op.template.captures(path) {
                if op.method == method {
                    return Ok((op, captures));
                }
                path_known = true;
            }
        }
    }
    Err(if path_known { SchemaError::MethodNotAllowed } else { SchemaError::UnknownRoute })
}

/// All values of a query parameter, percent-decoded (`+` as space), in order.
pub fn query_values(raw_path: &str, name: &str) -> Result<Vec<String>, SchemaError> {
    let bad = || SchemaError::InvalidParameter { location: format!("query.{name}"), keyword: "encoding".into() };
    let mut out = Vec::new();
    for (k, v) in url_pairs(query_of(raw_path)) {
        if decode_component(k).ok_or_else(bad)? == name {
            out.push(decode_component(v).ok_or_else(bad)?);
        }
    }
    Ok(out)
}

fn location(param: &Param) -> String {
    let prefix = match param.location {
        In::Path => "path",
        In::Query => "query",
        In::Header => "header",
    };
    format!("{prefix}.{}", param.name)
}

/// Path, query and header parameters against their schemas.
pub fn check_parameters(
    op: &Operation,
    captures: &[(String, String)],
    raw_path: &str,
    header: &dyn Fn(&str) -> Vec<String>,
) -> Result<(), SchemaError> {
    for param in &op.params {
        let values: Vec<String> = match param.location {
            In::Path => captures.iter().filter(|(n, _)| *n == param.name).map(|(_, v)| v.clone()).collect(),
            In::Query => query_values(raw_path, &param.name)?,
            In::Header => header(&param.name),
        };
        if values.is_empty() {
            if param.required {
                return Err(SchemaError::MissingParameter { location: location(param) });
            }
            continue;
        }
        // A parameter given empty (`?status=`) is not given, unless the contract allows it
        // (`allowEmptyValue`, false by default): a required one is missing, an optional query
        // parameter refused (OpenAPI 3.0 §4.7.12.1), as openapi-core reads it.
        if !param.allow_empty && values.iter().all(String::is_empty) {
            if param.required {
                return Err(SchemaError::MissingParameter { location: location(param) });
            }
            if param.location == In::Query {
                return Err(SchemaError::InvalidParameter { location: location(param), keyword: "allowEmptyValue".into() });
            }
        }
        let instance = if param.array {
            let items: Vec<&str> = if values.len() == 1 { values[0].split(',').collect() } else { values.iter().map(String::as_str).collect() };
            Value::Array(items.into_iter().map(|t| coerce(param.scalar, t)).collect())
        } else if values.len() > 1 {
            return Err(SchemaError::InvalidParameter { location: location(param), keyword: "maxItems".into() });
        } else {
            coerce(param.scalar, &values[0])
        };
        if let Err(e) = param.validator.validate(&instance) {
            return Err(SchemaError::InvalidParameter { location: location(param), keyword: e.keyword.to_string() });
        }
    }
    Ok(())
}

/// Does a declared media type (`application/json`, `image/*`, `*/*`) cover a message's
/// `content-type`? Parameters (`; charset=utf-8`) and case do not matter.
fn covers(declared: &str, content_type: Option<&str>) -> bool {
    let given = essence(content_type.unwrap_or(""));
    let (kind, _) = given.split_once('/').unwrap_or((given.as_str(), ""));
    let declared = essence(declared);
    declared == given || declared == "*/*" || declared.strip_suffix("/*").is_some_and(|k| k == kind)
}

/// The declared media type a request's content type falls under.
pub fn check_content_type<'a>(op: &'a Operation, has_body: bool, content_type: Option<&str>) -> Result<Option<&'a Media>, SchemaError> {
    if !has_body {
        return if op.body_required { Err(SchemaError::MissingBody) } else { Ok(None) };
    }
    if op.media.is_empty() {
        return Err(SchemaError::UnexpectedBody);
    }
    let media = op.media.iter().find(|m| covers(&m.media_type, content_type)).ok_or(SchemaError::UnsupportedMediaType)?;
    if media.format == (BodyFormat::Unreadable { allowed: false }) {
        return Err(SchemaError::UncheckedMediaType);
    }
    Ok(Some(media))
}

/// The declared answer for a status: the exact code, else its class (`2XX`), else `default`.
pub fn declared_response(op: &Operation, status: u16) -> Option<&Response> {
    let by = |key: StatusKey| op.responses.iter().find(|r| r.status == key);
    by(StatusKey::Code(status)).or_else(|| by(StatusKey::Class(status / 100))).or_else(|| by(StatusKey::Default))
}

/// The declared answer for a status and content type: the exact code, else its class (`2XX`),
/// else `default`; then the media type as for requests.
pub fn match_response<'a>(op: &'a Operation, status: u16, content_type: Option<&str>) -> Result<&'a ResponseMedia, SchemaError> {
    let response = declared_response(op, status).ok_or(SchemaError::UndeclaredResponse)?;
    response.media.iter().find(|m| covers(&m.media_type, content_type)).ok_or(SchemaError::UndeclaredResponse)
}

/// A JSON answer: tagged fields cut (or the answer blocked), then — when validating — the rest
/// against the declared schema. `Ok(Some(body))`: the answer to send instead.
/// An answer for a caller granted `scopes`: the tagged fields cut (or the answer blocked), then
/// validated; the rewritten body when something was cut.
pub fn check_answer(checks: &ResponseChecks, media: &ResponseMedia, body: &[u8], scopes: &[String]) -> Result<Option<Vec<u8>>, SchemaError> {
    let invalid = || SchemaError::ResponseViolation { location: "/body".into(), keyword: "json".into() };
    let mut answer: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // Not JSON: nothing can be cut; it passes only when it is not validated.
        Err(_) if checks.validate => return Err(invalid()),
        Err(_) => return Ok(None),
    };
    let changed = match media.tags {
        Some(schema) if media.may_tag => cut_fields(&checks.tags, schema, &mut answer, &checks.fields, scopes)?,
        _ => false,
    };
    if let Some(validator) = &media.validator {
        if let Err(e) = validator.validate(&answer) {
            return Err(SchemaError::ResponseViolation { location: format!("/body{}", e.path), keyword: e.keyword.to_string() });
        }
    }
    if !changed {
        return Ok(None);
    }
    serde_json::to_vec(&answer).map(Some).map_err(|_| invalid())
}

/// A JSON body, read by the strict reader, against the operation's schema: the first violation.
pub fn check_body(media: &Media, body: Result<&Document, JsonError>) -> Result<(), SchemaError> {
    let Some(validator) = &media.validator else { return Ok(()) };
    let instance = match body {
        Ok(document) => &document.value,
        Err(JsonError::Invalid) => return Err(SchemaError::InvalidJson),
        Err(JsonError::TooDeep { max_depth }) => return Err(SchemaError::TooDeep { max_depth }),
        Err(JsonError::Ambiguous(what)) => return Err(SchemaError::AmbiguousJson { what }),
    };
    validate_body(validator, instance)
}

/// A form body (urlencoded or multipart), read as its schema's object, against the schema.
pub fn check_form(media: &Media, content_type: Option<&str>, body: &[u8]) -> Result<(), SchemaError> {
    let Some(validator) = &media.validator else { return Ok(()) };
    let read = match (media.format, form_kind(content_type)) {
        (BodyFormat::UrlEncoded | BodyFormat::Multipart, Some(kind)) => read_form(&kind, body, &media.fields),
        (BodyFormat::UrlEncoded | BodyFormat::Multipart, None) => Err(FormError::Invalid),
        (BodyFormat::Json | BodyFormat::Unchecked | BodyFormat::Unreadable { .. }, _) => return Ok(()),
    };
    match read {
        Ok(instance) => validate_body(validator, &instance),
        Err(FormError::Invalid) => Err(SchemaError::InvalidForm),
        Err(FormError::Ambiguous) => Err(SchemaError::AmbiguousForm),
    }
}

fn validate_body(validator: &Schema, instance: &Value) -> Result<(), SchemaError> {
    match validator.validate(instance) {
        Ok(()) => Ok(()),
        Err(e) => Err(SchemaError::SchemaViolation { location: format!("/body{}", e.path), keyword: e.keyword.to_string() }),
    }
}
