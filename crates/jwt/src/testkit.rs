//! Keys and tokens for tests (feature `testkit`). Tokens are built claim by claim so tests can
//! leave out or falsify any of them; signatures come from the same crates the filter verifies
//! with (`p256`, `ed25519-compact`, `hmac`), from fresh keys for every [`TestKeys`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};

use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::Signer;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

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
    pub es: p256::ecdsa::SigningKey,
    pub ed: ed25519_compact::KeyPair,
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}

/// A different 32-byte seed on every call (no RNG needed on wasm32).
fn next_seed() -> [u8; 32] {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Sha256::digest(format!("meshward testkit key {n}")).into()
}

impl TestKeys {
    pub fn new() -> Self {
        TestKeys {
            hmac_secret: (0u8..64).collect(),
            es: p256::ecdsa::SigningKey::from_slice(&next_seed()).unwrap(),
            ed: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(next_seed())),
        }
    }

    /// The public JWKS (and the HMAC secret as an `oct` key).
    pub fn jwks(&self) -> String {
        self.jwks_with_kids("hs", "es", "ed")
    }

    pub fn jwks_with_kids(&self, hs: &str, es: &str, ed: &str) -> String {
        let point = self.es.verifying_key().to_sec1_point(false);
        let point = point.as_bytes();
        json!({"keys": [
            {"kty": "oct", "kid": hs, "k": b64(&self.hmac_secret)},
            {"kty": "EC", "kid": es, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]), "use": "sig"},
            {"kty": "OKP", "kid": ed, "crv": "Ed25519", "x": b64(self.ed.pk.as_ref())},
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
        if alg == "HS256" {
            return hs256(&self.hmac_secret, &header, claims);
        }
        let input = signing_input(&header, claims);
        let signature = match alg {
            "ES256" => {
                let sig: p256::ecdsa::Signature = self.es.sign(input.as_bytes());
                sig.to_bytes().to_vec()
            }
            "EdDSA" => self.ed.sk.sign(input.as_bytes(), None).to_vec(),
            other => panic!("testkit cannot sign {other}"),
        };
        format!("{input}.{}", b64(&signature))
    }
}

fn signing_input(header: &Value, claims: &Map<String, Value>) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims.clone()).to_string().as_bytes())
    )
}

/// An HS256 token with exactly this header and payload.
pub fn hs256(secret: &[u8], header: &Value, claims: &Map<String, Value>) -> String {
    let input = signing_input(header, claims);
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
