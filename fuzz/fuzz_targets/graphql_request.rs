//! Fuzzed GraphQL documents and request bodies: the parser's limits, fragment expansion and the
//! persisted-operation decision hold without panicking, whatever the bytes.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshward_graphql::decide::{check_operation, operations};
use meshward_graphql::document::{check_document, Limits};
use meshward_graphql::GraphqlConfig;

const LIMITS: Limits = Limits { max_depth: 8, max_aliases: 10, introspection: false };

fn config() -> &'static GraphqlConfig {
    static CONFIG: OnceLock<GraphqlConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let config = serde_json::json!({"allow_raw_documents": true, "max_batch": 4,
            "persisted": [{"document": "query Book($id: ID!) { book(id: $id) { title } }"}, {"id": "shelf", "document": "{ books { title } }"}]});
        GraphqlConfig::parse(config.to_string().as_bytes()).expect("config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = check_document(text, &LIMITS);
    if let Ok(document) = meshward_core::json::read(data, meshward_core::json::MAX_DEPTH) {
        if let Ok(ops) = operations(&document.value, config().max_batch) {
            for op in &ops {
                let _ = check_operation(config(), op, data.len() % 2 == 0);
            }
        }
    }
});
