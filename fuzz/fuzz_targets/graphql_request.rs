//! Fuzzed GraphQL documents and request bodies: the parser's limits, fragment expansion and the
//! persisted-operation decision, the schema walk (costs, scoped fields) hold without panicking,
//! whatever the bytes.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshward_graphql::decide::{check_request, operations};
use meshward_graphql::document::{check_document, Limits};
use meshward_graphql::GraphqlConfig;

const LIMITS: Limits = Limits { max_depth: 8, max_aliases: 10, introspection: false, default_list_size: 10, max_directives: 10 };

const SCHEMA: &str = r#"
    interface Node { id: ID! }
    type Book implements Node { id: ID! title: String author: Author secret: String @requiresScopes(scopes: [["admin"]]) }
    type Author implements Node { id: ID! name: String books(first: Int): [Book] @listSize(slicingArguments: ["first"]) }
    union Found = Book | Author
    type Query { book(id: ID!): Book books(first: Int, last: Int): [Book] @listSize(slicingArguments: ["first", "last"]) node(id: ID!): Node search: [Found] @cost(weight: 3) }
"#;

fn config() -> &'static GraphqlConfig {
    static CONFIG: OnceLock<GraphqlConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let config = serde_json::json!({"allow_raw_documents": true, "max_batch": 4,
            "persisted": [{"document": "query Book($id: ID!) { book(id: $id) { title } }"}, {"id": "shelf", "document": "query S($n: Int) { books(first: $n) { title } }"}],
            "schema": SCHEMA, "max_cost": 1000});
        GraphqlConfig::parse(config.to_string().as_bytes()).expect("config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = check_document(text, &LIMITS, None);
    let _ = check_document(text, &LIMITS, config().schema.as_ref());
    if let Ok(document) = meshward_core::json::read(data, meshward_core::json::MAX_DEPTH) {
        if let Ok(ops) = operations(&document.value, config().max_batch, true) {
            let _ = check_request(config(), &ops, data.len() % 2 == 0, &mut || None);
        }
    }
});
