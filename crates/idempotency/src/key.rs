//! What identifies a retry: the key as the client sent it (one form, however it was written),
//! the scope it lives in (caller + operation), and the fingerprint of the request it was first
//! used for.

use meshward_core::Principal;
use sha2::{Digest, Sha256};

use crate::IdempotencyError;

/// Longest key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// The key from the header's values. The draft makes the value a structured-field string
/// (`"8e03978e-…"`); most clients send it bare (`8e03978e-…`). Both forms are the same key. A
/// key sent twice, empty, too long, or with characters outside visible ASCII is refused: two
/// readers must not be able to pick two keys out of one request.
pub fn parse_key<'a>(mut values: impl Iterator<Item = &'a str>) -> Result<String, IdempotencyError> {
    let Some(value) = values.next() else { return Err(IdempotencyError::KeyMissing) };
    if values.next().is_some() {
        return Err(IdempotencyError::KeyInvalid);
    }
    let value = value.trim_matches([' ', '\t']);
    let key = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|k| k.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')),
        None => Some(value).filter(|k| k.bytes().all(|b| (0x21..0x7f).contains(&b))),
    };
    match key {
        Some(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => Ok(k.to_string()),
        _ => Err(IdempotencyError::KeyInvalid),
    }
}

fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    meshward_core::hex::encode(&hasher.finalize())
}

/// The engine key: `idempotency/<operation>/<digest of caller and key>` (apart from webhook
/// replay keys in the same namespace), so one caller's key never reaches
/// another's stored answer. `None` when the request has no authenticated subject.
pub fn scoped_key(principal: Option<&Principal>, operation: &str, key: &str) -> Option<String> {
    let principal = principal?;
    let subject = principal.subject.as_deref()?;
    let tenant = principal.tenant.as_deref().unwrap_or("");
    let scope = digest(&[principal.issuer.as_bytes(), tenant.as_bytes(), subject.as_bytes(), key.as_bytes()]);
    Some(format!("idempotency/{operation}/{scope}"))
}

/// What the request was: method, canonical path and query, and the (decoded) body.
pub fn fingerprint(method: &str, canonical: &str, query: &str, body: &[u8]) -> String {
    digest(&[method.as_bytes(), canonical.as_bytes(), query.as_bytes(), &Sha256::digest(body)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdempotencyError::{KeyInvalid, KeyMissing};

    #[test]
    fn one_key_per_request_in_either_form() {
        let cases: [(&[&str], Result<&str, IdempotencyError>); 12] = [
            (&["8e03978e-40d5-43e8-bc93-6894a57f9324"], Ok("8e03978e-40d5-43e8-bc93-6894a57f9324")),
            (&["\"8e03978e-40d5-43e8-bc93-6894a57f9324\""], Ok("8e03978e-40d5-43e8-bc93-6894a57f9324")),
            (&[" abc "], Ok("abc")),
            (&["\"a b\""], Ok("a b")),
            (&[], Err(KeyMissing)),
            (&[""], Err(KeyInvalid)),
            (&["\"\""], Err(KeyInvalid)),
            (&["a b"], Err(KeyInvalid)),
            (&["\"a\\\"b\""], Err(KeyInvalid)),
            (&["\"abc"], Err(KeyInvalid)),
            (&["abc", "abc"], Err(KeyInvalid)),
            (&["caf\u{e9}"], Err(KeyInvalid)),
        ];
        for (values, want) in cases {
            assert_eq!(parse_key(values.iter().copied()).as_deref(), want.as_ref().map(|s| *s), "{values:?}");
        }
        assert_eq!(parse_key(["k".repeat(MAX_KEY_LEN).as_str()].into_iter()).map(|k| k.len()), Ok(MAX_KEY_LEN));
        assert_eq!(parse_key(["k".repeat(MAX_KEY_LEN + 1).as_str()].into_iter()), Err(KeyInvalid));
    }

    fn principal(issuer: &str, tenant: Option<&str>, subject: Option<&str>) -> Principal {
        Principal {
            provider: "p".into(),
            issuer: issuer.into(),
            subject: subject.map(str::to_string),
            audiences: vec![],
            scopes: vec![],
            tenant: tenant.map(str::to_string),
            claims: Default::default(),
        }
    }

    #[test]
    fn keys_are_scoped_to_caller_and_operation() {
        let alice = principal("https://idp", None, Some("alice"));
        let key = scoped_key(Some(&alice), "create-order", "k1").unwrap();
        assert!(key.starts_with("idempotency/create-order/") && key.len() == "idempotency/create-order/".len() + 64, "{key}");
        let others = [
            scoped_key(Some(&principal("https://idp", None, Some("bob"))), "create-order", "k1"),
            scoped_key(Some(&principal("https://other-idp", None, Some("alice"))), "create-order", "k1"),
            scoped_key(Some(&principal("https://idp", Some("t2"), Some("alice"))), "create-order", "k1"),
            scoped_key(Some(&alice), "refund", "k1"),
            scoped_key(Some(&alice), "create-order", "k2"),
        ];
        for other in others {
            assert_ne!(other.as_deref(), Some(key.as_str()));
        }
        assert_eq!(scoped_key(Some(&alice), "create-order", "k1").as_deref(), Some(key.as_str()));
        assert_eq!(scoped_key(None, "create-order", "k1"), None);
        assert_eq!(scoped_key(Some(&principal("https://idp", None, None)), "create-order", "k1"), None);
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let base = fingerprint("POST", "/orders", "", b"{\"q\":1}");
        assert_eq!(base, fingerprint("POST", "/orders", "", b"{\"q\":1}"));
        for other in [
            fingerprint("PUT", "/orders", "", b"{\"q\":1}"),
            fingerprint("POST", "/orders/1", "", b"{\"q\":1}"),
            fingerprint("POST", "/orders", "dry_run=1", b"{\"q\":1}"),
            fingerprint("POST", "/orders", "", b"{\"q\":2}"),
            // Length-prefixed parts: moving a byte between fields changes the fingerprint.
            fingerprint("POST", "/orders?", "", b"{\"q\":1}"),
        ] {
            assert_ne!(other, base);
        }
    }
}
