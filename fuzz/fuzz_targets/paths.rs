//! Path canonicalisation, templates and query parsing on arbitrary input; canonical paths are
//! fixed points (canonicalising twice changes nothing).
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshward_core::route::{canonical_path, query_param, PathTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(canonical) = canonical_path(text) {
        assert_eq!(canonical_path(&canonical).as_deref(), Ok(canonical.as_str()), "not idempotent: {text:?}");
        if let Ok(t) = PathTemplate::parse("/tenants/{tenant}/orders/{id}") {
            let _ = t.captures(&canonical);
        }
    }
    let _ = query_param(text, "user");
    let _ = PathTemplate::parse(text);
});
