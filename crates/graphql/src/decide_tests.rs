//! One row per decision.

use serde_json::json;

use std::rc::Rc;

use meshward_core::Principal;

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
    Operation { query: query.map(str::to_string), persisted: persisted.map(str::to_string), name: name.map(str::to_string), variables: serde_json::Map::new() }
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
        assert_eq!(check_operation(c, &operation, false).map(|_| ()), want, "{case}");
    }
    // Over GET: queries only.
    assert_eq!(check_operation(&strict, &op(None, Some("relay-two"), Some("A")), true).map(|_| ()), Ok(()));
    assert_eq!(check_operation(&strict, &op(None, Some("relay-two"), Some("B")), true).map(|_| ()), Err(GraphqlError::MutationOverGet));
    assert_eq!(check_operation(&open, &op(Some("mutation { a }"), None, None), true).map(|_| ()), Err(GraphqlError::MutationOverGet));
    assert_eq!(check_operation(&open, &op(Some("{ a }"), None, None), true).map(|_| ()), Ok(()));
    assert_eq!(GraphqlError::MutationOverGet.denial().status(), 405);
}

#[test]
fn requests_are_read_as_servers_read_them() {
    let book = sha256_hex(BOOK);
    let apollo = json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": book}}, "variables": {"id": "1"}});
    let mut want = op(None, Some(&book), None);
    want.variables.insert("id".into(), json!("1"));
    assert_eq!(operations(&apollo, 1, true), Ok(vec![want]));
    assert_eq!(operations(&json!({"documentId": "relay-two", "operationName": "A"}), 1, true), Ok(vec![op(None, Some("relay-two"), Some("A"))]));
    let unread = operations(&json!({"query": "{ a }", "variables": {"n": 3}}), 1, false).map(|o| o[0].variables.len());
    assert_eq!(unread, Ok(0), "without a schema the variables are not copied");
    let with_variables = operations(&json!({"query": "{ a }", "variables": {"n": 3}}), 1, true).map(|o| o[0].variables.clone());
    assert_eq!(with_variables, Ok(json!({"n": 3}).as_object().cloned().unwrap_or_default()));
    assert_eq!(operations(&json!([{"query": "{ a }"}, {"query": "{ b }"}]), 2, true).map(|o| o.len()), Ok(2));
    assert_eq!(operations(&json!([{"query": "{ a }"}, {"query": "{ b }"}, {"query": "{ c }"}]), 2, true), Err(GraphqlError::BatchTooLarge { max: 2 }));
    for bad in [json!([]), json!("{ a }"), json!({"query": 7}), json!({"id": "x", "extensions": {"persistedQuery": {"sha256Hash": "y"}}}), json!({"id": "x", "documentId": "y"}), json!({"documentId": 5}), json!([1]), json!({"query": "{ a }", "variables": [1]})] {
        assert_eq!(operations(&bad, 2, true), Err(GraphqlError::InvalidRequest), "{bad}");
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
        (json!({"allow_raw_documents": true, "max_cost": 10}), "max_cost: costs are read from the schema"),
        (json!({"allow_raw_documents": true, "schema": "type Query { a: Nope }"}), "schema: Query.a: undeclared type Nope"),
        (json!({"persisted": [{"document": "{ b }"}], "schema": SCHEMA}), "persisted[0].document: the schema declares no Query.b"),
        (json!({"persisted": [{"document": "{ users { name } }"}], "schema": SCHEMA, "max_cost": 5}), "persisted[0].document: the operations cost 10, more than 5"),
        (json!({"allow_raw_documents": true, "schema": SCHEMA, "max_cost": 0}), "max_cost: must be at least 1"),
    ];
    for (c, want) in rows {
        let err = parse(c.clone()).unwrap_or_else(|| panic!("accepted: {c}"));
        assert!(err.contains(want), "{c}: {err}");
    }
}

const SCHEMA: &str = r#"
    type User { name: String email: String @requiresScopes(scopes: [["users:pii"]]) }
    type Query {
      a: Int
      users(first: Int): [User] @listSize(slicingArguments: ["first"])
      admin: Int @requiresScopes(scopes: [["admin"], ["ops", "oncall"]])
    }
"#;

fn user(scopes: &str) -> Rc<Principal> {
    Rc::new(Principal {
        provider: "p".into(),
        issuer: "i".into(),
        subject: Some("u".into()),
        audiences: vec![],
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        tenant: None,
        claims: serde_json::Map::new(),
    })
}

#[test]
fn with_a_schema_requests_are_priced_and_scoped() {
    let list = "query L($n: Int) { users(first: $n) { name } }";
    let c = GraphqlConfig::parse(
        json!({"persisted": [{"id": "list", "document": list}, {"id": "pii", "document": "{ users(first: 2) { email } }"}], "allow_raw_documents": true,
               "schema": SCHEMA, "max_cost": 50, "max_batch": 3})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let with = |mut o: Operation, variables: serde_json::Value| {
        o.variables = variables.as_object().cloned().unwrap_or_default();
        o
    };
    // (case, operations, the caller's scopes (None: no verified user), decision)
    let included = "query Q($e: Boolean!) { users(first: 1) { name email @include(if: $e) } }";
    // (case, operations, the caller's scopes (None: no verified user), decision, the user read)
    type Row<'a> = (&'a str, Vec<Operation>, Option<&'a str>, Result<(), GraphqlError>, bool);
    let rows: Vec<Row> = vec![
        ("persisted, small list", vec![with(op(None, Some("list"), None), json!({"n": 5}))], None, Ok(()), false),
        ("persisted, list too large by its variable", vec![with(op(None, Some("list"), None), json!({"n": 60}))], None, Err(GraphqlError::TooCostly { cost: 60, max: 50 }), false),
        ("a size variable that is not a number", vec![with(op(None, Some("list"), None), json!({"n": "60"}))], None, Err(GraphqlError::InvalidRequest), false),
        ("a batch priced together", vec![with(op(None, Some("list"), None), json!({"n": 30})); 2], None, Err(GraphqlError::TooCostly { cost: 60, max: 50 }), false),
        ("raw, literal size", vec![op(Some("{ users(first: 51) { name } }"), None, None)], None, Err(GraphqlError::TooCostly { cost: 51, max: 50 }), false),
        ("raw, an undeclared field", vec![op(Some("{ users { nope } }"), None, None)], None, Err(GraphqlError::UnknownField { coordinate: "User.nope".into() }), false),
        ("a scoped field without a user", vec![op(None, Some("pii"), None)], None, Err(GraphqlError::MissingPrincipal), true),
        ("a scoped field, scope held", vec![op(None, Some("pii"), None)], Some("users:pii"), Ok(()), true),
        ("a scoped field, scope not held", vec![op(None, Some("pii"), None)], Some("users:read"), Err(GraphqlError::MissingScope { coordinate: "User.email".into() }), true),
        ("any one of the lists", vec![op(Some("{ admin }"), None, None)], Some("oncall ops"), Ok(()), true),
        ("all of a list", vec![op(Some("{ admin }"), None, None)], Some("ops"), Err(GraphqlError::MissingScope { coordinate: "Query.admin".into() }), true),
        ("a batch: the scoped operation decides", vec![op(Some("{ a }"), None, None), op(Some("{ admin }"), None, None)], Some("users:pii"), Err(GraphqlError::MissingScope { coordinate: "Query.admin".into() }), true),
        ("a scoped field under @include, false", vec![with(op(Some(included), None, None), json!({"e": false}))], None, Ok(()), false),
        ("a scoped field under @include, true", vec![with(op(Some(included), None, None), json!({"e": true}))], None, Err(GraphqlError::MissingPrincipal), true),
        ("a scoped field under @include, not given (strict)", vec![op(Some(included), None, None)], None, Err(GraphqlError::MissingPrincipal), true),
        ("a condition that is not a boolean", vec![with(op(Some(included), None, None), json!({"e": 1}))], None, Err(GraphqlError::InvalidRequest), false),
        ("a scoped field under @skip(if: true)", vec![op(Some("{ users(first: 1) { name email @skip(if: true) } }"), None, None)], None, Ok(()), false),
        ("the same field also unconditionally", vec![with(op(Some("query Q($e: Boolean!) { users(first: 1) { email @include(if: $e) } u: users(first: 1) { email } }"), None, None), json!({"e": false}))],
         None, Err(GraphqlError::MissingPrincipal), true),
    ];
    for (case, ops, scopes, want, reads_user) in rows {
        let mut read = 0;
        let mut caller = || {
            read += 1;
            scopes.map(user)
        };
        assert_eq!(check_request(&c, &ops, false, &mut caller), want, "{case}");
        assert_eq!(read, usize::from(reads_user), "{case}: the user is read only for scoped fields that run");
    }
}
