//! Why a GraphQL request is refused: [`operations`] reads what it asks to run (one operation,
//! or a batch), [`check_operation`] decides each: a persisted operation by hash or id, or — only
//! where allowed — a raw document within the limits; with a schema, [`check_request`] then
//! prices them all and checks the caller holds the scopes their fields need. Pure functions;
//! the stage feeds them.

use std::borrow::Cow;
use std::rc::Rc;

use meshward_core::Principal;
use serde_json::{Map, Value};

use crate::config::{sha256_hex, GraphqlConfig};
use crate::document::{check_document, Access, OperationInfo};
use crate::GraphqlError;

/// One operation of a request, as a GraphQL server reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operation {
    /// `query`: the document's text.
    pub query: Option<String>,
    /// `extensions.persistedQuery.sha256Hash` (Apollo), or `id` / `documentId` (Relay).
    pub persisted: Option<String>,
    /// `operationName`: which operation of the document runs.
    pub name: Option<String>,
    /// `variables` (list sizes may come from them).
    pub variables: Map<String, Value>,
}

fn string(value: Option<&Value>) -> Result<Option<String>, GraphqlError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(GraphqlError::InvalidRequest),
    }
}

/// One operation's JSON object (a POST body, or the parameters of a GET). Its `variables` are
/// copied only when `read_variables` (a schema prices or scopes by them).
pub fn operation(object: &Value, read_variables: bool) -> Result<Operation, GraphqlError> {
    let Value::Object(map) = object else { return Err(GraphqlError::InvalidRequest) };
    let hash = string(map.get("extensions").and_then(|e| e.get("persistedQuery")).and_then(|p| p.get("sha256Hash")))?;
    // Three names for one thing, read by different servers: they must agree.
    let mut named = [hash, string(map.get("id"))?, string(map.get("documentId"))?].into_iter().flatten();
    let persisted = named.next();
    if named.any(|other| Some(&other) != persisted.as_ref()) {
        return Err(GraphqlError::InvalidRequest);
    }
    let variables = match map.get("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(v)) if read_variables => v.clone(),
        Some(Value::Object(_)) => Map::new(),
        Some(_) => return Err(GraphqlError::InvalidRequest),
    };
    Ok(Operation { query: string(map.get("query"))?, persisted, name: string(map.get("operationName"))?, variables })
}

/// The operations of a POST body: one object, or a batch (an array of them).
pub fn operations(body: &Value, max_batch: usize, read_variables: bool) -> Result<Vec<Operation>, GraphqlError> {
    match body {
        Value::Array(items) if items.is_empty() => Err(GraphqlError::InvalidRequest),
        Value::Array(items) if items.len() > max_batch => Err(GraphqlError::BatchTooLarge { max: max_batch }),
        Value::Array(items) => items.iter().map(|item| operation(item, read_variables)).collect(),
        one => Ok(vec![operation(one, read_variables)?]),
    }
}

/// The operation `name` picks to run (none named: the document's only one).
fn picked<'a>(operations: &'a [OperationInfo], name: Option<&str>) -> Option<&'a OperationInfo> {
    match (name, operations) {
        (Some(name), _) => operations.iter().find(|o| o.name.as_deref() == Some(name)),
        (None, [one]) => Some(one),
        (None, _) => None,
    }
}

/// The picked operation may run over this method: a GET runs queries only (a mutation a link
/// or an image could trigger is a CSRF; GraphQL over HTTP forbids it).
fn runs<'a>(operations: &'a [OperationInfo], name: Option<&str>, over_get: bool) -> Result<&'a OperationInfo, GraphqlError> {
    match picked(operations, name) {
        None => Err(GraphqlError::InvalidDocument),
        Some(op) if over_get && !op.query => Err(GraphqlError::MutationOverGet),
        Some(op) => Ok(op),
    }
}

/// A persisted operation (by hash or id, its document's hash matching any text sent with it),
/// or a raw document where allowed, within the limits; over GET, a query. The operation that
/// runs (persisted ones analysed once, at configuration).
pub fn check_operation<'c>(config: &'c GraphqlConfig, op: &Operation, over_get: bool) -> Result<Cow<'c, OperationInfo>, GraphqlError> {
    let hash = op.query.as_deref().map(sha256_hex);
    let key = match (&op.persisted, &hash) {
        (Some(sent), Some(computed)) if config.persisted.contains_key(sent) && sent != computed => {
            // An id (not a hash) with the text: the text must be the persisted document.
            let known = config.persisted.get(sent).and_then(|i| config.documents.get(*i)).map(|(d, _)| sha256_hex(d));
            if known.as_ref() != Some(computed) {
                return Err(GraphqlError::HashMismatch);
            }
            sent.clone()
        }
        (Some(sent), Some(computed)) if sent != computed => return Err(GraphqlError::HashMismatch),
        (Some(sent), _) => sent.clone(),
        (None, Some(computed)) => computed.clone(),
        (None, None) => return Err(GraphqlError::InvalidRequest),
    };
    if let Some((_, operations)) = config.persisted.get(&key).and_then(|i| config.documents.get(*i)) {
        return runs(operations, op.name.as_deref(), over_get).map(Cow::Borrowed);
    }
    let Some(query) = &op.query else { return Err(GraphqlError::UnknownPersistedQuery) };
    if !config.allow_raw_documents {
        return Err(if op.persisted.is_some() { GraphqlError::UnknownPersistedQuery } else { GraphqlError::NotPersisted });
    }
    let operations = check_document(query, &config.limits, config.schema.as_ref())?;
    runs(&operations, op.name.as_deref(), over_get).cloned().map(Cow::Owned)
}

/// The caller holds what each field needs: for every entry, all scopes of one of its lists.
pub fn authorize(access: &[&Access], user: Option<&Principal>) -> Result<(), GraphqlError> {
    if access.is_empty() {
        return Ok(());
    }
    let user = user.ok_or(GraphqlError::MissingPrincipal)?;
    for field in access {
        let held = |all: &Vec<String>| all.iter().all(|s| user.scopes.contains(s));
        if !field.needs.iter().all(|any_of| any_of.iter().any(held)) {
            return Err(GraphqlError::MissingScope { coordinate: field.coordinate.clone() });
        }
    }
    Ok(())
}

/// Every operation of a request: each may run ([`check_operation`]), together they cost at
/// most `max_cost`, and the caller (read only when a selected field needs scopes) holds what
/// their fields need.
pub fn check_request(config: &GraphqlConfig, ops: &[Operation], over_get: bool, user: &mut dyn FnMut() -> Option<Rc<Principal>>) -> Result<(), GraphqlError> {
    let mut running = Vec::with_capacity(ops.len());
    for op in ops {
        running.push(check_operation(config, op, over_get)?);
    }
    if let Some(max) = config.max_cost {
        let mut cost = 0u64;
        for (info, op) in running.iter().zip(ops) {
            cost = cost.saturating_add(info.cost.of(&op.variables)?);
        }
        if cost > max {
            return Err(GraphqlError::TooCostly { cost, max });
        }
    }
    // The scoped fields that run with these variables (`@include(if: $v)` and kin).
    let mut needed = Vec::new();
    for (info, op) in running.iter().zip(ops) {
        for access in &info.access {
            if access.applies(&op.variables)? {
                needed.push(access);
            }
        }
    }
    if needed.is_empty() {
        return Ok(());
    }
    authorize(&needed, user().as_deref())
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
