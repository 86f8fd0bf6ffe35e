//! Every policy's configuration parser: an error or a configuration, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshward_jwt::JwtConfig::parse(data, &|_| None);
    let _ = meshward_webhook::WebhookConfig::parse(data, &|_| None);
    let _ = meshward_ownership::OwnershipConfig::parse(data);
    let _ = meshward_ratelimit::RateLimitConfig::parse(data);
    let _ = meshward_schema::SchemaConfig::parse(data);
    // The same bytes as an OpenAPI document (JSON or YAML text).
    if let Ok(text) = std::str::from_utf8(data) {
        let config = serde_json::json!({"openapi_text": text});
        let _ = meshward_schema::SchemaConfig::parse(config.to_string().as_bytes());
    }
});
