//! Keys and tokens for tests (feature `testkit`). Tokens are built claim by claim so tests can
//! leave out or falsify any of them; signatures come from jwt-simple (ES256, EdDSA) and from
//! the `hmac` crate (HS256, and hand-forged headers such as `crit` or `alg: none`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use hmac::{Hmac, KeyInit, Mac};
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};
use sha2::Sha256;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "orders-api";
/// 2023-11-14T22:13:20Z, the fake host's default clock.
pub const NOW: u64 = 1_700_000_000;

pub fn b64(data: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(data).unwrap()
}

/// An HMAC secret, an ES256 and an Ed25519 key pair, with kids `hs`, `es`, `ed`.
pub struct TestKeys {
    pub hmac_secret: Vec<u8>,
    pub es: ES256KeyPair,
    pub ed: Ed25519KeyPair,
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKeys {
    pub fn new() -> Self {
        TestKeys {
            hmac_secret: (0u8..64).collect(),
            es: ES256KeyPair::generate(),
            ed: Ed25519KeyPair::generate(),
        }
    }

    /// The public JWKS (and the HMAC secret as an `oct` key).
    pub fn jwks(&self) -> String {
        self.jwks_with_kids("hs", "es", "ed")
    }

    pub fn jwks_with_kids(&self, hs: &str, es: &str, ed: &str) -> String {
        let point = self.es.public_key().public_key().to_bytes_uncompressed();
        json!({"keys": [
            {"kty": "oct", "kid": hs, "k": b64(&self.hmac_secret)},
            {"kty": "EC", "kid": es, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]), "use": "sig"},
            {"kty": "OKP", "kid": ed, "crv": "Ed25519", "x": b64(&self.ed.public_key().to_bytes())},
        ]})
        .to_string()
    }

    /// Standard claims valid at [`NOW`] for [`ISSUER`] / [`AUDIENCE`].
    pub fn claims() -> Map<String, Value> {
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme",
               "iat": NOW - 10, "exp": NOW + 300, "scope": "orders:read orders:write"})
        .as_object()
        .cloned()
        .unwrap()
    }

    /// Signs `claims` with `alg` (`HS256`, `ES256`, `EdDSA`) and an optional `kid`.
    pub fn sign(&self, alg: &str, kid: Option<&str>, claims: &Map<String, Value>) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        match alg {
            "HS256" => hs256(&self.hmac_secret, &header, claims),
            "ES256" | "EdDSA" => {
                // jwt-simple signs its own claim struct; rebuild ours in it field by field.
                let mut c = JWTClaims {
                    issued_at: None,
                    expires_at: None,
                    invalid_before: None,
                    issuer: None,
                    subject: None,
                    audiences: None,
                    jwt_id: None,
                    nonce: None,
                    custom: Map::new(),
                };
                for (k, v) in claims {
                    match (k.as_str(), v) {
                        ("iat", Value::Number(n)) => c.issued_at = Some(Duration::from_secs(n.as_u64().unwrap())),
                        ("exp", Value::Number(n)) => c.expires_at = Some(Duration::from_secs(n.as_u64().unwrap())),
                        ("nbf", Value::Number(n)) => c.invalid_before = Some(Duration::from_secs(n.as_u64().unwrap())),
                        ("iss", Value::String(s)) => c.issuer = Some(s.clone()),
                        ("sub", Value::String(s)) => c.subject = Some(s.clone()),
                        ("aud", Value::String(s)) => c.audiences = Some(Audiences::AsString(s.clone())),
                        ("aud", Value::Array(a)) => {
                            c.audiences = Some(Audiences::AsSet(a.iter().map(|x| x.as_str().unwrap().to_string()).collect()))
                        }
                        _ => {
                            c.custom.insert(k.clone(), v.clone());
                        }
                    }
                }
                if alg == "ES256" {
                    let mut key = ES256KeyPair::from_bytes(&self.es.to_bytes()).unwrap();
                    if let Some(kid) = kid {
                        key = key.with_key_id(kid);
                    }
                    key.sign(c).unwrap()
                } else {
                    let mut key = Ed25519KeyPair::from_bytes(&self.ed.to_bytes()).unwrap();
                    if let Some(kid) = kid {
                        key = key.with_key_id(kid);
                    }
                    key.sign(c).unwrap()
                }
            }
            other => panic!("testkit cannot sign {other}"),
        }
    }
}

/// An HS256 token with exactly this header and payload.
pub fn hs256(secret: &[u8], header: &Value, claims: &Map<String, Value>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims.clone()).to_string().as_bytes())
    );
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// A filter configuration with one local-JWKS provider `main` and the usual rules:
/// `/public` open, `/api` requires `main`.
pub fn local_config(jwks: &str, extra_provider_fields: Value) -> String {
    let mut provider = json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": jwks},
        "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
    });
    if let (Some(p), Some(extra)) = (provider.as_object_mut(), extra_provider_fields.as_object()) {
        p.extend(extra.clone());
    }
    json!({
        "providers": {"main": provider},
        "rules": [
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/api"}, "requires": {"provider_name": "main"}},
        ],
    })
    .to_string()
}
