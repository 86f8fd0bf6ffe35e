//! Fuzzed requests and answers against the crAPI contract: routing, parameters, content type,
//! body and answer checks decide without panicking, whatever the bytes.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshward_core::route::canonical_path;
use meshward_schema::validate::{check_answer, check_body, check_form, check_content_type, check_parameters, match_operation, match_response};
use meshward_schema::SchemaConfig;

const CRAPI: &str = include_str!("../../tests/specs/crapi-openapi-spec.json");
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

fn config() -> &'static SchemaConfig {
    static CONFIG: OnceLock<SchemaConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let doc: serde_json::Value = serde_json::from_str(CRAPI).expect("spec");
        let config = serde_json::json!({"openapi": doc, "response": {"validate": true, "data_classes": {"pii": "strip"}}});
        SchemaConfig::parse(config.to_string().as_bytes()).expect("config")
    })
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let Some((&selector, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(4, |b| *b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let content_type = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let header = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let method = METHODS[usize::from(selector) % METHODS.len()];
    let Ok(canonical) = canonical_path(&path) else { return };
    let Ok((op, captures)) = match_operation(config, method, &canonical) else { return };
    let headers = |_: &str| vec![header.clone()];
    let _ = check_parameters(op, &captures, &path, &headers);
    if let Ok(Some(media)) = check_content_type(op, !body.is_empty(), Some(&content_type)) {
        let read = meshward_core::json::read(body, config.max_depth);
        let _ = check_body(media, read.as_ref().map_err(|e| *e));
        let _ = check_form(media, Some(&content_type), body);
    }
    let status = 200 + u16::from(selector % 8);
    if let (Some(checks), Ok(media)) = (&config.response, match_response(op, status, Some(&content_type))) {
        let _ = check_answer(checks, media, body, &[]);
    }
});
