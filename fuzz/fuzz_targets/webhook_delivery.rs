//! Fuzzed signature headers and body for every scheme: header checks and signature
//! verification decide without panicking and never accept a fuzzed signature.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshward_webhook::verify::{check_headers, verify_signature};
use meshward_webhook::WebhookConfig;

const CONFIG: &str = r#"{"endpoints": [
  {"name": "sw", "match": {"prefix": "/sw"}, "scheme": "standard_webhooks", "secrets": [{"inline_string": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, {"inline_string": "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g="}]},
  {"name": "st", "match": {"prefix": "/st"}, "scheme": "stripe", "secrets": [{"inline_string": "whsec_test_secret"}]},
  {"name": "gh", "match": {"prefix": "/gh"}, "scheme": "github", "secrets": [{"inline_string": "It's a Secret to Everybody"}]},
  {"name": "hm", "match": {"prefix": "/hm"}, "scheme": "hmac", "secrets": [{"inline_string": "0123456789abcdef"}],
   "hmac": {"signature_header": "x-sig", "encoding": "base64", "timestamp_header": "x-ts", "id_header": "x-id", "signed_content": "{id}.{timestamp}.{body}"}}
]}"#;

fuzz_target!(|data: &[u8]| {
    let config = WebhookConfig::parse(CONFIG.as_bytes(), &|_| None).expect("config");
    let mut parts = data.split(|b| *b == 0);
    let values: Vec<String> = (0..4).map(|_| String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned()).collect();
    let body = parts.next().unwrap_or_default();
    let header = |name: &str| -> Option<String> {
        let i = match name {
            "webhook-id" | "svix-id" | "x-github-delivery" | "x-id" => 0,
            "webhook-timestamp" | "svix-timestamp" | "x-ts" => 1,
            "webhook-signature" | "svix-signature" | "stripe-signature" | "x-hub-signature-256" | "x-sig" => 2,
            _ => 3,
        };
        Some(values[i].clone())
    };
    for endpoint in &config.endpoints {
        let now = values[1].trim().parse::<u64>().unwrap_or(1_700_000_000);
        if let Ok(delivery) = check_headers(endpoint, &header, now) {
            assert!(verify_signature(endpoint, &delivery, body).is_err(), "accepted a fuzzed signature");
        }
    }
});
