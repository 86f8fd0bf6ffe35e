//! Why a request is refused: [`find_rule`], then [`authorize_request`] (function level and
//! the checks on path, query and headers), [`check_body`] (writes) and [`check_response`]
//! (what the upstream returned). Pure functions; the stage feeds them.

use meshward_core::json::fold;
use meshward_core::request::Unreadable;
use meshward_core::route::query_param;
use meshward_core::caller::Caller;
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

fn claim_rule_holds(principal: &Principal, rule: &ClaimRule) -> bool {
    principal.claim_values(&rule.claim).iter().any(|v| rule.one_of.contains(v))
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
    if principal.claim_values(&check.claim).iter().any(|c| c == value) {
        Ok(())
    } else {
        Err(failed(check))
    }
}

/// The request side: the calling workload, then the user (principal, scopes, claims, bypass),
/// then the path / query / header checks.
pub fn authorize_request(
    rule: &Rule,
    captures: &[(String, String)],
    caller: Caller<'_>,
    raw_path: &str,
    header: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Authorized, OwnershipError> {
    if rule.public {
        return Ok(Authorized::Public);
    }
    let Some(principal) = rule.access.admit(caller)? else {
        return Ok(Authorized::Checked { check_body: false, check_response: false });
    };
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

/// A body as a service's binder reads it (strict JSON, or a form's fields), or why it could
/// not be read (`meshward_core::request::RequestState::document`).
pub type Read<'a> = Result<&'a Value, Unreadable>;

/// A `*` was crossed and an element lacks the rest of the pointer.
struct ElementLacksField;

/// The member a service binds to `key`: the exact name, else the one name that equals it
/// ignoring case (Go and .NET bind case-insensitively; the strict reader refused bodies where
/// two names fold together, so there is at most one).
fn member<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        let folded = fold(key);
        map.iter().find(|(k, _)| fold(k) == folded).map(|(_, v)| v)
    })
}

/// What a JSON pointer reached: its values, and whether a `*` segment found a collection to
/// walk (an empty one reaches no value and is still there).
#[derive(Default)]
struct Reached<'a> {
    values: Vec<&'a Value>,
    walked: bool,
}

/// The values a JSON pointer reaches. A `*` segment walks every element of an array (or value
/// of an object) and every element must carry the rest of the pointer: one that lacks it is
/// an error, not a skipped element. Without `*`, a missing field reaches nothing.
fn reach<'a>(value: &'a Value, segments: &[String], under_star: bool, out: &mut Reached<'a>) -> Result<(), ElementLacksField> {
    let Some((segment, rest)) = segments.split_first() else {
        out.values.push(value);
        return Ok(());
    };
    let next = match (value, segment.as_str()) {
        (Value::Array(items), "*") => {
            out.walked = true;
            return items.iter().try_for_each(|v| reach(v, rest, true, out));
        }
        (Value::Object(map), "*") => {
            out.walked = true;
            return map.values().try_for_each(|v| reach(v, rest, true, out));
        }
        (Value::Array(items), index) => index.parse::<usize>().ok().and_then(|i| items.get(i)),
        (Value::Object(map), key) => member(map, key),
        _ => None,
    };
    match next {
        Some(v) => reach(v, rest, under_star, out),
        None if under_star => Err(ElementLacksField),
        None => Ok(()),
    }
}

fn check_json(rule: &Rule, principal: Option<&Principal>, body: Read<'_>, response: bool) -> Result<(), OwnershipError> {
    let checks: Vec<&OwnerCheck> = rule
        .owner
        .iter()
        .filter(|c| matches!((&c.location, response), (Location::BodyField(_), false) | (Location::ResponseField(_), true)))
        .collect();
    if checks.is_empty() {
        return Ok(());
    }
    let principal = principal.ok_or(OwnershipError::MissingPrincipal)?;
    for check in checks {
        let (Location::BodyField(pointer) | Location::ResponseField(pointer)) = &check.location else { continue };
        let document = match body {
            Ok(document) => document,
            // Cannot read the answer: it is not shown as owned.
            Err(_) if response => return Err(failed(check)),
            Err(Unreadable::AmbiguousJson) => return Err(OwnershipError::AmbiguousJson),
            Err(Unreadable::AmbiguousForm) => return Err(OwnershipError::AmbiguousForm),
            Err(Unreadable::Invalid) => return Err(OwnershipError::InvalidBody),
        };
        let segments: Vec<String> = pointer.split('/').skip(1).map(|raw| raw.replace("~1", "/").replace("~0", "~")).collect();
        let mut reached = Reached::default();
        if reach(document, &segments, false, &mut reached).is_err() {
            return Err(failed(check));
        }
        if reached.values.is_empty() {
            // An empty list (a user with no orders) holds nothing of anyone else's: every
            // element of it is owned. A field that is not there at all proves nothing.
            if check.required && !reached.walked {
                return Err(failed(check));
            }
            continue;
        }
        for value in reached.values {
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
pub fn check_body(rule: &Rule, principal: Option<&Principal>, body: Read<'_>) -> Result<(), OwnershipError> {
    check_json(rule, principal, body, false)
}

/// The object(s) the upstream returned must belong to the principal (IDOR through opaque ids).
pub fn check_response(rule: &Rule, principal: Option<&Principal>, body: Read<'_>) -> Result<(), OwnershipError> {
    check_json(rule, principal, body, true)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
