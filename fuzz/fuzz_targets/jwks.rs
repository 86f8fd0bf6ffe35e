#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshward_jwt::jwks::parse_jwks(data, true);
    let _ = meshward_jwt::jwks::parse_jwks(data, false);
});
