//! Any bytes as a bearer token, against a provider with HMAC, EC and Ed25519 keys: a decision,
//! never a panic, and never an allow for something that is not a valid token.
#![no_main]
use std::rc::Rc;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshward_jwt::authn::{authenticate, Inputs, Outcome};
use meshward_jwt::config::{JwtConfig, KeySource, Requirement};
use meshward_jwt::testkit::{local_config, TestKeys, NOW};

fn jwks() -> &'static str {
    static JWKS: OnceLock<String> = OnceLock::new();
    JWKS.get_or_init(|| TestKeys::new().jwks())
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let config = JwtConfig::parse(local_config(jwks(), serde_json::json!({})).as_bytes(), &|_| None).expect("config");
    let keys = |i: usize| match &config.providers[i].keys {
        KeySource::Local(k) => Some(Rc::clone(k)),
        KeySource::Remote(_) | KeySource::Native { .. } => None,
    };
    let auth = format!("Bearer {token}");
    let header = |n: &str| (n == "authorization").then(|| auth.clone());
    let outcome = authenticate(&config, &Requirement::Provider(0), &Inputs {
        header: &header, keys: &keys, may_refresh: &|_| false, cached: &|_, _| None, remember: &|_, _, _| {}, refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW,
    });
    // Random bytes cannot carry a signature by keys generated in this process.
    assert!(!matches!(outcome, Outcome::Allowed(_)), "allowed a fuzzed token");
});
