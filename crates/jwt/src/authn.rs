//! The per-request decision: does this request satisfy its rule's requirement?
//!
//! [`authenticate`] is the one place that says why a request was refused. It is pure: headers,
//! keys and time come in as arguments, so every branch is tested on the host.

use std::rc::Rc;

use meshward_core::Principal;
use serde_json::{Map, Value};

use crate::cache::Verified;
use crate::config::{JwtConfig, KeySource, Requirement};
use crate::jwks::KeySet;
use crate::verify::{accept_claims, check_time_claims, extract_token, verify_token};
use crate::JwtError;

/// A verified token: who it names, which provider verified it, where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    pub principal: Rc<Principal>,
    /// The principal's filter-state encoding (see [`Verified`]).
    pub encoded: Rc<[u8]>,
    pub provider: usize,
    pub token_header: String,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allowed; `None` when the requirement let a request without any token through.
    Allowed(Option<Authenticated>),
    Denied(JwtError),
    /// The provider's remote keys must be (re)fetched before deciding; the caller fetches
    /// and asks again, or, when it may not fetch, asks with that provider's refresh refused.
    NeedKeys(usize),
}

/// What `authenticate` needs to know about the request and the key caches.
pub struct Inputs<'a> {
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// The provider's current key set, if any.
    pub keys: &'a dyn Fn(usize) -> Option<Rc<KeySet>>,
    /// Whether the provider's remote keys may be fetched now for this request.
    pub may_refresh: &'a dyn Fn(usize) -> bool,
    /// A principal this exact token already verified to with the provider's current keys.
    pub cached: &'a dyn Fn(usize, &str) -> Option<Verified>,
    /// Remembers a token that just verified.
    pub remember: &'a dyn Fn(usize, &str, &Verified),
    /// Why this exact token was already refused with the provider's current keys (a bad
    /// signature), so it is refused again without verifying.
    pub refused: &'a dyn Fn(usize, &str) -> Option<JwtError>,
    /// Remembers a token whose signature just failed.
    pub remember_refusal: &'a dyn Fn(usize, &str, JwtError),
    /// For a `from_native_jwt_authn` provider: the payload Envoy's jwt_authn verified for this
    /// request (`None`: it verified none; `Err`: its metadata could not be read).
    pub native_payload: &'a dyn Fn(usize) -> Option<Result<Map<String, Value>, JwtError>>,
    /// Unix seconds.
    pub now: u64,
}

/// Decides whether the request satisfies `requirement`.
pub fn authenticate(config: &JwtConfig, requirement: &Requirement, inputs: &Inputs<'_>) -> Outcome {
    match requirement {
        Requirement::Provider(i) => verify_provider(config, *i, inputs),
        Requirement::AllowMissing => {
            let presented: Vec<Requirement> = (0..config.providers.len())
                .filter(|i| match config.providers[*i].keys {
                    KeySource::Native { .. } => (inputs.native_payload)(*i).is_some(),
                    _ => extract_token(&config.providers[*i].from_headers, inputs.header).is_some(),
                })
                .map(Requirement::Provider)
                .collect();
            if presented.is_empty() {
                Outcome::Allowed(None)
            } else {
                // A token that is present must verify with some provider that reads it.
                authenticate(config, &Requirement::Any(presented), inputs)
            }
        }
        Requirement::Any(list) => {
            let mut deepest: Option<JwtError> = None;
            for r in list {
                match authenticate(config, r, inputs) {
                    Outcome::Denied(e) => {
                        if deepest.is_none_or(|d| e.depth() > d.depth()) {
                            deepest = Some(e);
                        }
                    }
                    decided => return decided,
                }
            }
            Outcome::Denied(deepest.unwrap_or(JwtError::MissingToken))
        }
        Requirement::All(list) => {
            let mut first = None;
            for r in list {
                match authenticate(config, r, inputs) {
                    Outcome::Allowed(a) => {
                        if first.is_none() {
                            first = a;
                        }
                    }
                    other => return other,
                }
            }
            Outcome::Allowed(first)
        }
    }
}

fn verify_provider(config: &JwtConfig, index: usize, inputs: &Inputs<'_>) -> Outcome {
    let Some(provider) = config.providers.get(index) else {
        return Outcome::Denied(JwtError::JwksUnavailable { retry_later: false });
    };
    if let KeySource::Native { .. } = provider.keys {
        return accept_native(provider, index, inputs);
    }
    let Some(found) = extract_token(&provider.from_headers, inputs.header) else {
        return Outcome::Denied(JwtError::MissingToken);
    };
    if let Some(Verified { principal, encoded }) = (inputs.cached)(index, &found.token) {
        // Signature, issuer and audience were verified for these bytes and keys; time was not.
        let checked = check_time_claims(&principal.claims, provider, inputs.now).and_then(|()| provider.revoked.check(&principal.claims));
        return match checked {
            Ok(()) => Outcome::Allowed(Some(Authenticated { principal, encoded, provider: index, token_header: found.header })),
            Err(e) => Outcome::Denied(e),
        };
    }
    if let Some(e) = (inputs.refused)(index, &found.token) {
        return Outcome::Denied(e);
    }
    let (remote, retry_later) = match &provider.keys {
        KeySource::Remote(r) => (true, r.unavailable_status == 503),
        KeySource::Local(_) | KeySource::Native { .. } => (false, false),
    };
    let Some(keys) = (inputs.keys)(index) else {
        return if remote && (inputs.may_refresh)(index) {
            Outcome::NeedKeys(index)
        } else {
            Outcome::Denied(JwtError::JwksUnavailable { retry_later })
        };
    };
    match verify_token(&found.token, provider, &keys, inputs.now, config.max_token_bytes) {
        Ok(principal) => {
            let verified = Verified::new(principal);
            // Remembered as verified; revocation is checked on every use, cached or not.
            (inputs.remember)(index, &found.token, &verified);
            if let Err(e) = provider.revoked.check(&verified.principal.claims) {
                return Outcome::Denied(e);
            }
            let Verified { principal, encoded } = verified;
            Outcome::Allowed(Some(Authenticated { principal, encoded, provider: index, token_header: found.header }))
        }
        Err(JwtError::UnknownKid) if remote && (inputs.may_refresh)(index) => Outcome::NeedKeys(index),
        Err(e) => {
            // The expensive failure, and one that depends on the token bytes and keys alone.
            if e == JwtError::BadSignature {
                (inputs.remember_refusal)(index, &found.token, e);
            }
            Outcome::Denied(e)
        }
    }
}

/// A provider whose tokens Envoy's jwt_authn verified: its payload, checked like one meshward
/// verified. No payload means jwt_authn verified no token for it (none sent, or one it refused
/// under `allow_missing_or_failed`): missing, whatever the request carries.
fn accept_native(provider: &crate::config::Provider, index: usize, inputs: &Inputs<'_>) -> Outcome {
    let Some(payload) = (inputs.native_payload)(index) else {
        return Outcome::Denied(JwtError::MissingToken);
    };
    let accepted = payload
        .and_then(|payload| accept_claims(payload, provider, inputs.now))
        .and_then(|principal| provider.revoked.check(&principal.claims).map(|()| principal));
    match accepted {
        Ok(principal) => {
            let Verified { principal, encoded } = Verified::new(principal);
            Outcome::Allowed(Some(Authenticated { principal, encoded, provider: index, token_header: String::new() }))
        }
        Err(e) => Outcome::Denied(e),
    }
}

#[cfg(test)]
#[path = "authn_tests.rs"]
mod tests;
