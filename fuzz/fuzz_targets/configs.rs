//! Every policy's configuration parser: an error or a configuration, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshward_jwt::JwtConfig::parse(data, &|_| None);
    let _ = meshward_webhook::WebhookConfig::parse(data, &|_| None);
    let _ = meshward_ownership::OwnershipConfig::parse(data);
    let _ = meshward_ratelimit::RateLimitConfig::parse(data);
});
