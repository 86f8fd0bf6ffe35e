//! Fuzzed principals, headers and peer addresses through rate-limit key building, and fuzzed
//! bytes as a rate-limit service's answer: no panics, and a key always has one value per part.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshward_core::caller::Caller;
use meshward_core::Principal;
use meshward_ratelimit::rls::{decode_response, encode_request};
use meshward_ratelimit::stage::{key_values, strip_port};
use meshward_ratelimit::RateLimitConfig;

const CONFIG: &str = r#"{"rules": [
  {"name": "k", "match": {"prefix": "/"},
   "key": ["subject", "tenant", "claim:org", "header:x-api-key", "client_ip"], "limit": {"requests": 5, "per": "1s"}}
]}"#;

fuzz_target!(|data: &[u8]| {
    let config = RateLimitConfig::parse(CONFIG.as_bytes()).expect("config");
    let mut parts = data.splitn(4, |b| *b == 0);
    let claims = parts.next().unwrap_or_default();
    let header = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let peer = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let answer = parts.next().unwrap_or_default();
    let principal = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(claims).ok().map(|claims| Principal {
        provider: "p".into(),
        issuer: "i".into(),
        subject: claims.get("sub").and_then(|v| v.as_str()).map(str::to_string),
        audiences: Vec::new(),
        scopes: Vec::new(),
        tenant: claims.get("tenant").and_then(|v| v.as_str()).map(str::to_string),
        claims,
    });
    for rule in &config.rules {
        let values = key_values(rule, Caller { user: principal.as_ref(), workload: None }, Some(strip_port(&peer)), &|_| Some(header.clone()));
        assert_eq!(values.len(), rule.key.len());
        let descriptor: Vec<(String, String)> = values.into_iter().map(|v| ("k".to_string(), v)).collect();
        let _ = encode_request("d", &[descriptor], 1);
    }
    let _ = decode_response(answer);
});
