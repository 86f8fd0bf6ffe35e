//! Verifying one token against one provider: the answer to "is this token acceptable here".

use ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use meshward_core::Principal;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{Provider, TokenLocation};
use crate::jwks::{Algorithm, KeySet, SignatureCheck};
use crate::JwtError;

/// A token found in a request, and the header it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub header: String,
}

/// Looks for a token in the provider's locations, in order.
pub fn extract_token(locations: &[TokenLocation], header: &dyn Fn(&str) -> Option<String>) -> Option<FoundToken> {
    for location in locations {
        let Some(value) = header(&location.header) else {
            continue;
        };
        let prefix = &location.value_prefix;
        let rest = match value.get(..prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(prefix) => &value[prefix.len()..],
            _ => continue,
        };
        let token = rest.trim();
        if !token.is_empty() {
            return Some(FoundToken {
                token: token.to_string(),
                header: location.header.clone(),
            });
        }
    }
    None
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    Base64UrlSafeNoPadding::decode_to_vec(segment, None).map_err(|_| JwtError::MalformedToken)
}

/// Verifies `token` for `provider` with its current `keys`, at `now` (Unix seconds).
///
/// Order: shape and size, header (`alg`, `crit`, `kid`), signature, time claims
/// (`exp` / `nbf` / `iat`, with the provider's clock skew), `exp` presence, issuer, audience.
pub fn verify_token(
    token: &str,
    provider: &Provider,
    keys: &KeySet,
    now: u64,
    max_token_bytes: usize,
) -> Result<Principal, JwtError> {
    if token.len() > max_token_bytes {
        return Err(JwtError::TokenTooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::MalformedToken);
    };
    let header: Header =
        serde_json::from_slice(&decode_segment(header_b64)?).map_err(|_| JwtError::MalformedToken)?;
    let alg = header
        .alg
        .as_deref()
        .and_then(Algorithm::from_name)
        .ok_or(JwtError::UnsupportedAlgorithm)?;
    if header.crit.is_some() {
        return Err(JwtError::UnsupportedCritical);
    }
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => {
            let with_kid: Vec<_> = keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if with_kid.is_empty() {
                return Err(JwtError::UnknownKid);
            }
            with_kid
        }
        None => keys.keys.iter().collect(),
    };
    let usable: Vec<_> = candidates
        .iter()
        .flat_map(|jwk| jwk.keys.iter())
        .filter(|k| k.algorithm() == alg)
        .collect();
    if usable.is_empty() {
        return Err(JwtError::AlgorithmMismatch);
    }

    // RFC 7515 §5.2: the signature covers the encoded header and payload as they arrived.
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let signature = decode_segment(signature_b64)?;
    let mut error = JwtError::MalformedToken;
    let mut verified = false;
    for key in usable {
        match key.check_signature(signing_input, &signature) {
            SignatureCheck::Valid => {
                verified = true;
                break;
            }
            SignatureCheck::Invalid => error = JwtError::BadSignature,
            SignatureCheck::Unreadable => {}
        }
    }
    if !verified {
        return Err(error);
    }
    // The payload was just authenticated; read it as a whole for the principal.
    let payload: Map<String, Value> =
        serde_json::from_slice(&decode_segment(payload_b64)?).map_err(|_| JwtError::MalformedToken)?;
    accept_claims(payload, provider, now)
}

/// The checks after the signature, on an authenticated payload (ours, or native `jwt_authn`'s):
/// claim types, time claims, issuer, audience; then the principal they name.
pub fn accept_claims(payload: Map<String, Value>, provider: &Provider, now: u64) -> Result<Principal, JwtError> {
    check_claim_types(&payload)?;
    check_time_claims(&payload, provider, now)?;
    if payload.get("iss").and_then(Value::as_str) != Some(provider.issuer.as_str()) {
        return Err(JwtError::WrongIssuer);
    }
    let audiences: Vec<String> = match payload.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    if !audiences.iter().any(|a| provider.audiences.contains(a)) {
        return Err(JwtError::WrongAudience);
    }
    Ok(principal_from_claims(provider, audiences, payload))
}

/// RFC 7519 §4.1: `iss`, `sub` and `jti` are strings, `aud` a string or an array of strings,
/// `exp`, `nbf` and `iat` seconds since the epoch (whole and not negative here). A registered
/// claim of another type is a token meshward cannot read, not one it reads its own way.
fn check_claim_types(claims: &Map<String, Value>) -> Result<(), JwtError> {
    let fits = |name: &str, value: &Value| match name {
        "iss" | "sub" | "jti" => value.is_string(),
        "aud" => value.is_string() || value.as_array().is_some_and(|list| list.iter().all(Value::is_string)),
        "exp" | "nbf" | "iat" => value.is_u64(),
        _ => true,
    };
    for (name, value) in claims {
        if !value.is_null() && !fits(name, value) {
            return Err(JwtError::MalformedToken);
        }
    }
    Ok(())
}

/// The time checks of [`verify_token`], also for a token whose signature, issuer and audience
/// were already verified (a cache hit): `exp`, then `nbf` and `iat`, against `now` with the
/// provider's clock skew.
pub fn check_time_claims(claims: &Map<String, Value>, provider: &Provider, now: u64) -> Result<(), JwtError> {
    let skew = provider.clock_skew_seconds;
    let seconds = |name: &str| claims.get(name).and_then(Value::as_u64);
    match seconds("exp") {
        Some(exp) if now.saturating_sub(skew) > exp => return Err(JwtError::Expired),
        None if provider.require_expiration => return Err(JwtError::MissingExpiration),
        _ => {}
    }
    for claim in ["nbf", "iat"] {
        if seconds(claim).is_some_and(|t| t > now.saturating_add(skew)) {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(())
}

fn principal_from_claims(provider: &Provider, audiences: Vec<String>, claims: Map<String, Value>) -> Principal {
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => s.split_whitespace().map(str::to_string).collect(),
        (_, Some(Value::Array(list))) => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        (_, Some(Value::String(s))) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Principal {
        provider: provider.name.clone(),
        issuer: provider.issuer.clone(),
        subject: text(claims.get("sub")),
        audiences,
        scopes,
        tenant: text(claims.get(&provider.tenant_claim)),
        claims,
    }
}

/// A claim rendered as a header value: strings as they are, numbers and booleans in JSON
/// form, arrays of those joined by `,`. `None` for objects, nulls and anything that would not be
/// a safe header value (control characters).
pub fn claim_header_value(value: &Value) -> Option<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(","),
        other => scalar(other)?,
    };
    if text.bytes().any(|b| b < b' ' || b == 0x7f) {
        return None;
    }
    Some(text)
}
