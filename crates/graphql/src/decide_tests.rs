//! One row per decision.

use serde_json::json;

use super::*;

const BOOK: &str = "query Book($id: ID!) { book(id: $id) { title author { name } } }";
const TWO: &str = "query A { a } mutation B { b }";

fn config(extra: serde_json::Value) -> GraphqlConfig {
    let mut c = json!({"persisted": [{"document": BOOK}, {"id": "relay-two", "document": TWO}], "max_depth": 3, "max_aliases": 2, "max_batch": 2});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    GraphqlConfig::parse(c.to_string().as_bytes()).unwrap()
}

fn op(query: Option<&str>, persisted: Option<&str>, name: Option<&str>) -> Operation {
    Operation { query: query.map(str::to_string), persisted: persisted.map(str::to_string), name: name.map(str::to_string) }
}

#[test]
fn persisted_operations_only_unless_raw_is_allowed() {
    let strict = config(json!({}));
    let open = config(json!({"allow_raw_documents": true}));
    let book = sha256_hex(BOOK);
    // (case, config, operation, decision)
    let rows: Vec<(&str, &GraphqlConfig, Operation, Result<(), GraphqlError>)> = vec![
        ("by hash", &strict, op(None, Some(&book), None), Ok(())),
        ("by hash with its document", &strict, op(Some(BOOK), Some(&book), None), Ok(())),
        ("the persisted text without a hash", &strict, op(Some(BOOK), None, None), Ok(())),
        ("by id, naming one of its operations", &strict, op(None, Some("relay-two"), Some("B")), Ok(())),
        ("by id, no operation named in a two-operation document", &strict, op(None, Some("relay-two"), None), Err(GraphqlError::InvalidDocument)),
        ("by id with its own text", &strict, op(Some(TWO), Some("relay-two"), Some("A")), Ok(())),
        ("by id with other text", &strict, op(Some("{ other }"), Some("relay-two"), Some("A")), Err(GraphqlError::HashMismatch)),
        ("unknown hash", &strict, op(None, Some(&"0".repeat(64)), None), Err(GraphqlError::UnknownPersistedQuery)),
        ("a hash that is not its text's", &strict, op(Some("{ a }"), Some(&book), None), Err(GraphqlError::HashMismatch)),
        ("raw text", &strict, op(Some("{ a }"), None, None), Err(GraphqlError::NotPersisted)),
        ("raw text registered under its own hash", &strict, op(Some("{ a }"), Some(&sha256_hex("{ a }")), None), Err(GraphqlError::UnknownPersistedQuery)),
        ("nothing to run", &strict, op(None, None, None), Err(GraphqlError::InvalidRequest)),
        ("raw allowed, within limits", &open, op(Some("{ a { b } }"), None, None), Ok(())),
        ("raw allowed, too deep", &open, op(Some("{ a { b { c { d } } } }"), None, None), Err(GraphqlError::TooDeep { max: 3 })),
        ("raw allowed, introspection", &open, op(Some("{ __schema { types { name } } }"), None, None), Err(GraphqlError::Introspection)),
        ("raw allowed, operation name not in it", &open, op(Some("query X { a }"), None, Some("Y")), Err(GraphqlError::InvalidDocument)),
    ];
    for (case, c, operation, want) in rows {
        assert_eq!(check_operation(c, &operation, false), want, "{case}");
    }
    // Over GET: queries only.
    assert_eq!(check_operation(&strict, &op(None, Some("relay-two"), Some("A")), true), Ok(()));
    assert_eq!(check_operation(&strict, &op(None, Some("relay-two"), Some("B")), true), Err(GraphqlError::MutationOverGet));
    assert_eq!(check_operation(&open, &op(Some("mutation { a }"), None, None), true), Err(GraphqlError::MutationOverGet));
    assert_eq!(check_operation(&open, &op(Some("{ a }"), None, None), true), Ok(()));
    assert_eq!(GraphqlError::MutationOverGet.denial().status(), 405);
}

#[test]
fn requests_are_read_as_servers_read_them() {
    let book = sha256_hex(BOOK);
    let apollo = json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": book}}, "variables": {"id": "1"}});
    assert_eq!(operations(&apollo, 1), Ok(vec![op(None, Some(&book), None)]));
    assert_eq!(operations(&json!({"documentId": "relay-two", "operationName": "A"}), 1), Ok(vec![op(None, Some("relay-two"), Some("A"))]));
    assert_eq!(operations(&json!([{"query": "{ a }"}, {"query": "{ b }"}]), 2).map(|o| o.len()), Ok(2));
    assert_eq!(operations(&json!([{"query": "{ a }"}, {"query": "{ b }"}, {"query": "{ c }"}]), 2), Err(GraphqlError::BatchTooLarge { max: 2 }));
    for bad in [json!([]), json!("{ a }"), json!({"query": 7}), json!({"id": "x", "extensions": {"persistedQuery": {"sha256Hash": "y"}}}), json!([1])] {
        assert_eq!(operations(&bad, 2), Err(GraphqlError::InvalidRequest), "{bad}");
    }
}

#[test]
fn bad_configurations_are_refused() {
    let parse = |c: serde_json::Value| GraphqlConfig::parse(c.to_string().as_bytes()).err().map(|e| e.to_string());
    let rows = [
        (json!({}), "persisted: list the persisted operations"),
        (json!({"persisted": [{"document": "{ a { b { c { d } } } }"}], "max_depth": 3}), "persisted[0].document: selections nest deeper than 3"),
        (json!({"persisted": [{"document": "{ a "}]}), "persisted[0].document: the document does not parse"),
        (json!({"persisted": [{"document": "{ a }"}, {"document": "{ a }"}]}), "names two persisted operations"),
        (json!({"allow_raw_documents": true, "max_depth": 0}), "max_depth: must be at least 1"),
        (json!({"allow_raw_documents": true, "paths": ["graphql"]}), "paths"),
        (json!({"allow_raw_documents": true, "introspect": true}), "unknown field `introspect`"),
    ];
    for (c, want) in rows {
        let err = parse(c.clone()).unwrap_or_else(|| panic!("accepted: {c}"));
        assert!(err.contains(want), "{c}: {err}");
    }
}
