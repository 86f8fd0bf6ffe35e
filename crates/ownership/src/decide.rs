//! Why a request is refused: [`find_rule`], then [`authorize_request`] (function level and
//! the checks on path, query and headers), [`check_body`] (writes) and [`check_response`]
//! (what the upstream returned). Pure functions; the stage feeds them.

use meshward_core::route::query_param;
use meshward_core::Principal;
use serde_json::Value;

use crate::config::{Bypass, ClaimRule, Location, OwnerCheck, OwnerReason, OwnershipConfig, Rule};
use crate::OwnershipError;

/// The rule that covers a method and canonical path, with the path parameters it captured.
pub fn find_rule<'a>(config: &'a OwnershipConfig, method: &str, canonical: &str) -> Option<(&'a Rule, Vec<(String, String)>)> {
    config.rules.iter().find_map(|rule| Some((rule, rule.route.captures(method, canonical)?)))
}

/// What the request side decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorized {
    /// A public rule: nothing checked.
    Public,
    /// The principal may skip object-level checks (audited by the caller).
    Bypassed,
    /// All checks so far passed; the body and/or the response still have to be checked.
    Checked { check_body: bool, check_response: bool },
}

/// The principal's value(s) for a claim: a string, a number, or the strings/numbers of an array.
fn claim_values(principal: &Principal, claim: &str) -> Vec<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match principal.claim(claim) {
        Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => match claim {
            "tenant" => principal.tenant.clone().into_iter().collect(),
            "sub" => principal.subject.clone().into_iter().collect(),
            _ => Vec::new(),
        },
    }
}

fn claim_rule_holds(principal: &Principal, rule: &ClaimRule) -> bool {
    claim_values(principal, &rule.claim).iter().any(|v| rule.one_of.contains(v))
}

fn bypasses(principal: &Principal, bypass: &Bypass) -> bool {
    bypass.scopes.iter().any(|s| principal.scopes.contains(s)) || bypass.claims.iter().any(|c| claim_rule_holds(principal, c))
}

fn failed(check: &OwnerCheck) -> OwnershipError {
    match check.reason {
        OwnerReason::TenantBoundary => OwnershipError::TenantBoundary { hide: check.hide },
        OwnerReason::NotOwner => OwnershipError::NotOwner { hide: check.hide },
    }
}

fn compare(check: &OwnerCheck, principal: &Principal, value: &str) -> Result<(), OwnershipError> {
    if claim_values(principal, &check.claim).iter().any(|c| c == value) {
        Ok(())
    } else {
        Err(failed(check))
    }
}

/// The request side: principal, scopes, claims, bypass, then the path / query / header checks.
pub fn authorize_request(
    rule: &Rule,
    captures: &[(String, String)],
    principal: Option<&Principal>,
    raw_path: &str,
    header: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Authorized, OwnershipError> {
    if rule.public {
        return Ok(Authorized::Public);
    }
    let principal = principal.ok_or(OwnershipError::MissingPrincipal)?;
    if !rule.scopes.iter().all(|s| principal.scopes.contains(s)) {
        return Err(OwnershipError::MissingScope);
    }
    if !rule.claims.iter().all(|c| claim_rule_holds(principal, c)) {
        return Err(OwnershipError::MissingClaim);
    }
    if bypasses(principal, &rule.bypass) {
        return Ok(Authorized::Bypassed);
    }
    for check in &rule.owner {
        let value = match &check.location {
            Location::PathParam(name) => captures.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
            Location::QueryParam(name) => query_param(raw_path, name).map_err(|_| OwnershipError::AmbiguousRequest)?,
            Location::Header(name) => match header(name).unwrap_or_default().as_slice() {
                [] => None,
                [one] => Some(one.clone()),
                _ => return Err(OwnershipError::AmbiguousRequest),
            },
            Location::BodyField(_) | Location::ResponseField(_) => continue,
        };
        // A location that is absent cannot prove ownership.
        compare(check, principal, &value.ok_or_else(|| failed(check))?)?;
    }
    Ok(Authorized::Checked { check_body: rule.needs_body(), check_response: rule.needs_response() })
}

/// The values a JSON pointer reaches; a `*` segment walks every element of an array (or
/// value of an object).
fn pointer_values<'a>(root: &'a Value, pointer: &str) -> Vec<&'a Value> {
    let mut current = vec![root];
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::new();
        for value in current {
            match (value, segment.as_str()) {
                (Value::Array(items), "*") => next.extend(items.iter()),
                (Value::Object(map), "*") => next.extend(map.values()),
                (Value::Array(items), index) => next.extend(index.parse::<usize>().ok().and_then(|i| items.get(i))),
                (Value::Object(map), key) => next.extend(map.get(key)),
                _ => {}
            }
        }
        current = next;
    }
    current
}

fn check_json(rule: &Rule, principal: Option<&Principal>, body: &[u8], response: bool) -> Result<(), OwnershipError> {
    let checks: Vec<&OwnerCheck> = rule
        .owner
        .iter()
        .filter(|c| matches!((&c.location, response), (Location::BodyField(_), false) | (Location::ResponseField(_), true)))
        .collect();
    if checks.is_empty() {
        return Ok(());
    }
    let principal = principal.ok_or(OwnershipError::MissingPrincipal)?;
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    for check in checks {
        let (Location::BodyField(pointer) | Location::ResponseField(pointer)) = &check.location else { continue };
        let Some(document) = &parsed else {
            // Cannot read the body: a write is refused as malformed, a response as not owned.
            return Err(if response { failed(check) } else { OwnershipError::InvalidBody });
        };
        let values = pointer_values(document, pointer);
        if values.is_empty() {
            if check.required {
                return Err(failed(check));
            }
            continue;
        }
        for value in values {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(failed(check)),
            };
            compare(check, principal, &text)?;
        }
    }
    Ok(())
}

/// Body fields of a write must belong to the principal (no creating or moving objects into
/// another tenant).
pub fn check_body(rule: &Rule, principal: Option<&Principal>, body: &[u8]) -> Result<(), OwnershipError> {
    check_json(rule, principal, body, false)
}

/// The object(s) the upstream returned must belong to the principal (IDOR through opaque ids).
pub fn check_response(rule: &Rule, principal: Option<&Principal>, body: &[u8]) -> Result<(), OwnershipError> {
    check_json(rule, principal, body, true)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
