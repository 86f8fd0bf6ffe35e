//! One row per decision.

use serde_json::{json, Value};

use super::*;
use meshward_core::caller::Caller;
use meshward_core::request::Unreadable;
use crate::config::OwnershipConfig;

fn principal(claims: Value) -> Principal {
    let map = claims.as_object().cloned().unwrap();
    Principal {
        provider: "p".into(),
        issuer: "i".into(),
        subject: map.get("sub").and_then(Value::as_str).map(str::to_string),
        audiences: vec![],
        scopes: map.get("scope").and_then(Value::as_str).map(|s| s.split(' ').map(str::to_string).collect()).unwrap_or_default(),
        tenant: map.get("tenant").and_then(Value::as_str).map(str::to_string),
        claims: map,
    }
}

fn config() -> OwnershipConfig {
    OwnershipConfig::parse(
        json!({
            "bypass": {"scopes": ["admin"]},
            "rules": [
                {"name": "health", "match": {"path": "/health"}, "public": true},
                {"name": "tenant-orders", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}", "methods": ["GET", "PUT"]},
                 "scopes": ["orders:read"],
                 "owner": [{"path_param": "tenant_id", "claim": "tenant"}, {"body_field": "/tenant", "claim": "tenant"}]},
                {"name": "create-order", "match": {"path": "/orders", "methods": ["POST"]},
                 "owner": [{"body_field": "/tenant", "claim": "tenant"}, {"body_field": "/items/*/owner", "claim": "sub", "required": false}]},
                {"name": "by-query", "match": {"path": "/search"}, "owner": [{"query_param": "user", "claim": "sub"}]},
                {"name": "hidden", "match": {"template": "/users/{user_id}"}, "owner": [{"path_param": "user_id", "claim": "sub", "deny_status": 404}]},
                {"name": "by-header", "match": {"path": "/account"}, "owner": [{"header": "x-account", "claim": "accounts"}]},
                {"name": "order", "match": {"template": "/orders/{id}"},
                 "owner": [{"response_field": "/order/user/email", "claim": "email"}]},
                {"name": "my-orders", "match": {"path": "/orders", "methods": ["GET"]},
                 "owner": [{"response_field": "/orders/*/user/email", "claim": "email"}]},
                {"name": "admin-only", "match": {"prefix": "/admin/"}, "claims": [{"claim": "role", "one_of": ["admin", "ops"]}], "bypass": {"claims": [{"claim": "role", "one_of": ["root"]}]}}
            ]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn decide(method: &str, path: &str, who: Option<&Principal>, headers: &[(&str, &str)]) -> Result<Authorized, OwnershipError> {
    let cfg = config();
    let canonical = meshward_core::route::canonical_path(path).unwrap();
    let Some((rule, captures)) = find_rule(&cfg, method, &canonical) else { return Err(OwnershipError::RouteNotCovered) };
    let owned: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let header = move |name: &str| {
        let v: Vec<String> = owned.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect();
        (!v.is_empty()).then_some(v)
    };
    authorize_request(rule, &captures, Caller { user: who, workload: None }, path, &header)
}

#[test]
fn request_side_decisions() {
    let alice = principal(json!({"sub": "alice", "tenant": "acme", "scope": "orders:read", "accounts": ["a1", "a2"], "email": "alice@acme.test"}));
    let admin = principal(json!({"sub": "root", "tenant": "ops", "scope": "orders:read admin"}));
    let no_scope = principal(json!({"sub": "bob", "tenant": "acme"}));
    let checked = |body, response| Ok(Authorized::Checked { check_body: body, check_response: response });
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a Principal>, Vec<(&'a str, &'a str)>, Result<Authorized, OwnershipError>);
    let cases: Vec<Case> = vec![
        ("public", "GET", "/health", None, vec![], Ok(Authorized::Public)),
        ("no principal", "GET", "/tenants/acme/orders/1", None, vec![], Err(OwnershipError::MissingPrincipal)),
        ("own tenant", "GET", "/tenants/acme/orders/1", Some(&alice), vec![], checked(true, false)),
        ("other tenant by path", "GET", "/tenants/globex/orders/1", Some(&alice), vec![], Err(OwnershipError::TenantBoundary { hide: false })),
        ("encoded path param", "GET", "/tenants/%61cme/orders/1", Some(&alice), vec![], checked(true, false)),
        ("missing scope", "GET", "/tenants/acme/orders/1", Some(&no_scope), vec![], Err(OwnershipError::MissingScope)),
        ("admin bypass", "GET", "/tenants/globex/orders/1", Some(&admin), vec![], Ok(Authorized::Bypassed)),
        ("method not covered", "DELETE", "/tenants/acme/orders/1", Some(&alice), vec![], Err(OwnershipError::RouteNotCovered)),
        ("query owner", "GET", "/search?user=alice", Some(&alice), vec![], checked(false, false)),
        ("hidden as 404", "GET", "/users/bob", Some(&alice), vec![], Err(OwnershipError::NotOwner { hide: true })),
        ("query other", "GET", "/search?user=bob", Some(&alice), vec![], Err(OwnershipError::NotOwner { hide: false })),
        ("query absent", "GET", "/search", Some(&alice), vec![], Err(OwnershipError::NotOwner { hide: false })),
        ("query repeated", "GET", "/search?user=alice&user=bob", Some(&alice), vec![], Err(OwnershipError::AmbiguousRequest)),
        ("header in claim array", "GET", "/account", Some(&alice), vec![("x-account", "a2")], checked(false, false)),
        ("header not in claim", "GET", "/account", Some(&alice), vec![("x-account", "a3")], Err(OwnershipError::NotOwner { hide: false })),
        ("header repeated", "GET", "/account", Some(&alice), vec![("x-account", "a1"), ("x-account", "a3")], Err(OwnershipError::AmbiguousRequest)),
        ("response check planned", "GET", "/orders/9", Some(&alice), vec![], checked(false, true)),
        ("claim rule", "GET", "/admin/users", Some(&alice), vec![], Err(OwnershipError::MissingClaim)),
        ("unknown route", "GET", "/nowhere", Some(&alice), vec![], Err(OwnershipError::RouteNotCovered)),
    ];
    for (name, method, path, who, headers, want) in cases {
        assert_eq!(decide(method, path, who, &headers), want, "{name}");
    }
}

fn read(body: &[u8]) -> Result<Value, Unreadable> {
    let mut request = meshward_core::RequestState::from_headers(vec![("content-type".into(), "application/json".into())], false);
    request.document(body, 64).cloned()
}

fn read_form(body: &[u8]) -> Result<Value, Unreadable> {
    let mut request = meshward_core::RequestState::from_headers(vec![("content-type".into(), "application/x-www-form-urlencoded".into())], false);
    request.document(body, 64).cloned()
}

#[test]
fn body_and_response_checks() {
    let cfg = config();
    let alice = principal(json!({"sub": "alice", "tenant": "acme", "email": "alice@acme.test"}));
    let create = cfg.rules.iter().find(|r| r.name.as_deref() == Some("create-order")).unwrap();
    let order = cfg.rules.iter().find(|r| r.name.as_deref() == Some("order")).unwrap();
    let body_cases: Vec<(&str, &[u8], Result<(), OwnershipError>)> = vec![
        ("own tenant", br#"{"tenant": "acme", "items": [{"owner": "alice"}]}"#, Ok(())),
        ("other tenant", br#"{"tenant": "globex"}"#, Err(OwnershipError::TenantBoundary { hide: false })),
        ("tenant missing", br#"{"items": []}"#, Err(OwnershipError::TenantBoundary { hide: false })),
        ("tenant not a string", br#"{"tenant": {"id": "acme"}}"#, Err(OwnershipError::TenantBoundary { hide: false })),
        ("one foreign item", br#"{"tenant": "acme", "items": [{"owner": "alice"}, {"owner": "mallory"}]}"#, Err(OwnershipError::NotOwner { hide: false })),
        ("not json", b"tenant=acme", Err(OwnershipError::InvalidBody)),
        ("not json either", b"\xef\xbb\xbf{}", Err(OwnershipError::AmbiguousJson)),
        ("tenant twice", br#"{"tenant": "acme", "tenant": "globex"}"#, Err(OwnershipError::AmbiguousJson)),
        ("tenant in two cases", br#"{"tenant": "acme", "Tenant": "globex"}"#, Err(OwnershipError::AmbiguousJson)),
        ("tenant in another case only", br#"{"TENANT": "globex"}"#, Err(OwnershipError::TenantBoundary { hide: false })),
        ("own tenant in another case", br#"{"Tenant": "acme"}"#, Ok(())),
        ("an item without owner", br#"{"tenant": "acme", "items": [{"owner": "alice"}, {"note": "x"}]}"#, Err(OwnershipError::NotOwner { hide: false })),
        ("an item that is not an object", br#"{"tenant": "acme", "items": [{"owner": "alice"}, 7]}"#, Err(OwnershipError::NotOwner { hide: false })),
        ("no items", br#"{"tenant": "acme", "items": []}"#, Ok(())),
        ("owner in another case", br#"{"tenant": "acme", "items": [{"OWNER": "mallory"}]}"#, Err(OwnershipError::NotOwner { hide: false })),
    ];
    for (name, body, want) in body_cases {
        assert_eq!(check_body(create, Some(&alice), read(body).as_ref().map_err(|e| *e)), want, "{name}");
    }
    assert_eq!(check_body(create, None, Ok(&json!({"tenant": "acme"}))), Err(OwnershipError::MissingPrincipal));
    // Form bodies: the same fields, as the service's binder reads them.
    let form_cases: Vec<(&str, &[u8], Result<(), OwnershipError>)> = vec![
        ("own tenant", b"tenant=acme", Ok(())),
        ("other tenant", b"tenant=globex", Err(OwnershipError::TenantBoundary { hide: false })),
        ("tenant twice", b"tenant=acme&tenant=globex", Err(OwnershipError::AmbiguousForm)),
        ("tenant in two cases", b"tenant=acme&TENANT=globex", Err(OwnershipError::AmbiguousForm)),
        ("broken escape", b"tenant=%zz", Err(OwnershipError::InvalidBody)),
    ];
    for (name, body, want) in form_cases {
        assert_eq!(check_body(create, Some(&alice), read_form(body).as_ref().map_err(|e| *e)), want, "form: {name}");
    }
    let response_cases: Vec<(&str, &[u8], Result<(), OwnershipError>)> = vec![
        ("own order", br#"{"order": {"id": 9, "user": {"email": "alice@acme.test"}}}"#, Ok(())),
        ("someone else's order", br#"{"order": {"id": 9, "user": {"email": "victim@acme.test"}}}"#, Err(OwnershipError::NotOwner { hide: false })),
        ("owner field absent", br#"{"order": {"id": 9}}"#, Err(OwnershipError::NotOwner { hide: false })),
        ("not json", b"<html>", Err(OwnershipError::NotOwner { hide: false })),
    ];
    for (name, body, want) in response_cases {
        assert_eq!(check_response(order, Some(&alice), read(body).as_ref().map_err(|e| *e)), want, "{name}");
    }
    let mine = cfg.rules.iter().find(|r| r.name.as_deref() == Some("my-orders")).unwrap();
    let list_cases: Vec<(&str, &[u8], Result<(), OwnershipError>)> = vec![
        ("own orders", br#"{"orders": [{"user": {"email": "alice@acme.test"}}]}"#, Ok(())),
        ("no orders: an empty list holds nothing of anyone else's", br#"{"orders": []}"#, Ok(())),
        ("an empty object walked by `*`", br#"{"orders": {}}"#, Ok(())),
        ("one order of someone else's", br#"{"orders": [{"user": {"email": "alice@acme.test"}}, {"user": {"email": "victim@acme.test"}}]}"#,
         Err(OwnershipError::NotOwner { hide: false })),
        ("an order without its owner", br#"{"orders": [{"user": {}}]}"#, Err(OwnershipError::NotOwner { hide: false })),
        ("no list at all", br#"{"total": 0}"#, Err(OwnershipError::NotOwner { hide: false })),
        ("a list that is not one", br#"{"orders": "none"}"#, Err(OwnershipError::NotOwner { hide: false })),
    ];
    for (name, body, want) in list_cases {
        assert_eq!(check_response(mine, Some(&alice), read(body).as_ref().map_err(|e| *e)), want, "{name}");
    }
    assert_eq!(OwnershipError::NotOwner { hide: true }.denial().status(), 404);
}

#[test]
fn bad_configurations_are_refused() {
    let parse = |rules: Value| OwnershipConfig::parse(json!({"rules": rules}).to_string().as_bytes()).err().map(|e| e.to_string());
    let cases = [
        (json!([]), "rules: at least one rule"),
        (json!([{"match": {"prefix": "/"}, "publik": true}]), "unknown field `publik`"),
        (json!([{"match": {"prefix": "/", "path": "/x"}}]), "exactly one of `prefix`, `path` or `template`"),
        (json!([{"match": {"template": "/a/{id"}}]), "rules[0].match: template"),
        (json!([{"match": {"template": "/a/{id}"}, "owner": [{"path_param": "other", "claim": "sub"}]}]), "{other} is not a parameter"),
        (json!([{"match": {"path": "/a"}, "owner": [{"claim": "sub"}]}]), "set exactly one of"),
        (json!([{"match": {"path": "/a"}, "owner": [{"body_field": "tenant", "claim": "tenant"}]}]), "JSON pointers"),
        (json!([{"match": {"path": "/a"}, "owner": [{"header": "x", "claim": "sub", "deny_status": 500}]}]), "500 is not 403 or 404"),
        (json!([{"match": {"path": "/a"}, "owner": [{"response_field": "/x", "claim": "sub", "deny_status": 404}]}]), "does not apply to response checks"),
        (json!([{"match": {"path": "/a"}, "public": true, "scopes": ["x"]}]), "a public rule cannot"),
        (json!([{"match": {"path": "/a", "methods": ["G3T"]}}]), "is not an HTTP method"),
        (json!([{"match": {"path": "/a"}, "bypass": {}}]), "names no scope or claim"),
        (json!([{"match": {"path": "/a"}, "claims": [{"claim": "role", "one_of": []}]}]), "one_of"),
        (json!([{"match": {"path": "/a"}, "workloads": ["billing"]}]), "rules[0].workloads: \"billing\" is not a SPIFFE ID"),
        (json!([{"match": {"path": "/a"}, "require_user": false}]), "needs `workloads`"),
        (json!([{"match": {"path": "/a"}, "require_user": false, "workloads": ["spiffe://m/ns/a/sa/b"], "scopes": ["x"]}]), "read from the user's token"),
        (json!([{"match": {"path": "/a"}, "public": true, "workloads": ["spiffe://m/ns/a/sa/b"]}]), "cannot also require workloads"),
    ];
    for (rules, want) in cases {
        let err = parse(rules.clone()).unwrap_or_else(|| panic!("accepted: {rules}"));
        assert!(err.contains(want), "{rules}: {err}");
    }
}

#[test]
fn workload_decisions() {
    let cfg = OwnershipConfig::parse(
        json!({"rules": [
            {"name": "settle", "match": {"template": "/internal/invoices/{id}/settle", "methods": ["POST"]},
             "workloads": ["spiffe://mesh.test/ns/billing/sa/billing"], "require_user": false},
            {"name": "refund", "match": {"template": "/invoices/{id}/refund", "methods": ["POST"]},
             "workloads": ["spiffe://mesh.test/ns/support/"], "scopes": ["refunds"],
             "claims": [{"claim": "act.sub", "one_of": ["spiffe://mesh.test/ns/support/sa/desk"]}]},
            {"name": "any", "match": {"prefix": "/"}, "scopes": ["read"]}
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let billing = meshward_core::workload::Workload::parse("spiffe://mesh.test/ns/billing/sa/billing").unwrap();
    let desk = meshward_core::workload::Workload::parse("spiffe://mesh.test/ns/support/sa/desk").unwrap();
    let intruder = meshward_core::workload::Workload::parse("spiffe://mesh.test/ns/orders/sa/orders").unwrap();
    let other_domain = meshward_core::workload::Workload::parse("spiffe://evil.test/ns/billing/sa/billing").unwrap();
    // A support agent's token, exchanged by the desk workload (RFC 8693 `act`).
    let agent = principal(json!({"sub": "agent7", "scope": "refunds read", "act": {"sub": "spiffe://mesh.test/ns/support/sa/desk"}}));
    let agent_direct = principal(json!({"sub": "agent7", "scope": "refunds read"}));
    let checked = Ok(Authorized::Checked { check_body: false, check_response: false });
    type Case<'a> = (&'a str, &'a str, Option<&'a Principal>, Option<&'a meshward_core::workload::Workload>, Result<Authorized, OwnershipError>);
    let cases: Vec<Case> = vec![
        ("workload alone", "/internal/invoices/7/settle", None, Some(&billing), checked.clone()),
        ("workload alone, a token changes nothing", "/internal/invoices/7/settle", Some(&agent), Some(&billing), checked.clone()),
        ("no certificate", "/internal/invoices/7/settle", Some(&agent), None, Err(OwnershipError::MissingWorkload)),
        ("another service account", "/internal/invoices/7/settle", None, Some(&intruder), Err(OwnershipError::WorkloadNotAllowed)),
        ("same path, another trust domain", "/internal/invoices/7/settle", None, Some(&other_domain), Err(OwnershipError::WorkloadNotAllowed)),
        ("on behalf of a user", "/invoices/7/refund", Some(&agent), Some(&desk), checked.clone()),
        ("workload without the user", "/invoices/7/refund", None, Some(&desk), Err(OwnershipError::MissingPrincipal)),
        ("user without the workload", "/invoices/7/refund", Some(&agent), None, Err(OwnershipError::MissingWorkload)),
        ("token not exchanged by the workload", "/invoices/7/refund", Some(&agent_direct), Some(&desk), Err(OwnershipError::MissingClaim)),
        ("namespace prefix, other namespace", "/invoices/7/refund", Some(&agent), Some(&billing), Err(OwnershipError::WorkloadNotAllowed)),
        ("rule without workloads ignores the peer", "/anything", Some(&agent), None, checked.clone()),
    ];
    for (name, path, user, workload, want) in cases {
        let (rule, captures) = find_rule(&cfg, "POST", path).unwrap();
        let got = authorize_request(rule, &captures, Caller { user, workload }, path, &|_| None);
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(OwnershipError::WorkloadNotAllowed.denial().status(), 403);
    assert_eq!(OwnershipError::MissingWorkload.denial().status(), 403);
}
