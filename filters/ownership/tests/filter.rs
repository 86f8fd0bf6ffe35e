//! The ownership filter driven through the fake host: principal from filter state only,
//! request body checks, response checks that cut the stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::rc::Rc;

use meshward_core::{Policy, PRINCIPAL_PROPERTY};
use meshward_host::FakeHost;
use meshward_ownership::OwnershipPolicy;
use meshward_runtime::{Filter, Verdict};
use serde_json::{json, Value};

fn policy() -> Rc<OwnershipPolicy> {
    let config = json!({"rules": [
        {"name": "write", "match": {"template": "/tenants/{tenant}/orders", "methods": ["POST"]},
         "owner": [{"path_param": "tenant", "claim": "tenant"}, {"body_field": "/tenant", "claim": "tenant"}]},
        {"name": "read", "match": {"template": "/orders/{id}", "methods": ["GET"]},
         "owner": [{"response_field": "/owner", "claim": "sub"}]},
    ]})
    .to_string();
    Rc::new(OwnershipPolicy::configure(config.as_bytes(), &FakeHost::default()).unwrap())
}

fn host(method: &str, path: &str, principal: Option<Value>) -> FakeHost {
    let mut host = FakeHost::with_request(&[(":method", method), (":path", path), ("x-request-id", "r-1")]);
    if let Some(p) = principal {
        host.properties.insert(vec![PRINCIPAL_PROPERTY.to_string()], p.to_string().into_bytes());
    }
    host
}

fn alice() -> Value {
    json!({"provider": "p", "issuer": "i", "subject": "alice", "audiences": [], "scopes": [], "tenant": "acme",
           "claims": {"sub": "alice", "tenant": "acme"}})
}

fn reason(host: &FakeHost) -> String {
    let body: Value = serde_json::from_slice(&host.sent.as_ref().unwrap().body).unwrap();
    body["reason"].as_str().unwrap().to_string()
}

#[test]
fn write_into_own_tenant_passes_other_tenant_is_refused() {
    let policy = policy();
    for (body, verdict) in [(br#"{"tenant":"acme"}"#.as_slice(), Verdict::Continue), (br#"{"tenant":"globex"}"#.as_slice(), Verdict::Pause)] {
        let mut h = host("POST", "/tenants/acme/orders", Some(alice()));
        let mut filter = Filter::new(&policy);
        assert_eq!(filter.on_request_headers(&mut h, false), Verdict::Continue, "headers go on, body is held");
        h.request_body = body.to_vec();
        assert_eq!(filter.on_request_body(&mut h, body.len(), true), verdict);
        if verdict == Verdict::Pause {
            assert_eq!(h.sent.as_ref().unwrap().status, 403);
            assert_eq!(reason(&h), "tenant_boundary");
            assert_eq!(h.counter("meshward_ownership_denied_total.route.write.reason.tenant_boundary"), 1);
        }
    }
}

#[test]
fn principal_comes_only_from_filter_state() {
    let policy = policy();
    let mut h = FakeHost::with_request(&[
        (":method", "POST"),
        (":path", "/tenants/acme/orders"),
        ("x-meshward-principal", &alice().to_string()),
        ("meshward.principal", &alice().to_string()),
    ]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut h, true), Verdict::Pause);
    assert_eq!(h.sent.as_ref().unwrap().status, 401);
    assert_eq!(reason(&h), "missing_principal");
    // Garbage in filter state is no principal either.
    let mut h = host("POST", "/tenants/acme/orders", None);
    h.properties.insert(vec![PRINCIPAL_PROPERTY.to_string()], b"{not json".to_vec());
    assert_eq!(Filter::new(&policy).on_request_headers(&mut h, true), Verdict::Pause);
    assert_eq!(reason(&h), "missing_principal");
}

#[test]
fn response_of_someone_else_is_cut() {
    let policy = policy();
    for (owner, cut) in [("alice", false), ("bob", true)] {
        let mut h = host("GET", "/orders/7", Some(alice()));
        let mut filter = Filter::new(&policy);
        assert_eq!(filter.on_request_headers(&mut h, true), Verdict::Continue);
        h.response_headers = vec![(":status".into(), "200".into())];
        assert_eq!(filter.on_response_headers(&mut h, false), Verdict::Continue);
        let body = json!({"id": 7, "owner": owner}).to_string().into_bytes();
        h.response_body = body[..5].to_vec();
        assert_eq!(filter.on_response_body(&mut h, 5, false), Verdict::Pause, "held until complete");
        h.response_body = body.clone();
        let verdict = filter.on_response_body(&mut h, body.len(), true);
        assert_eq!(verdict == Verdict::Pause, cut, "{owner}");
        assert_eq!(h.sent.is_some(), cut, "a local reply after the status makes Envoy reset the stream");
    }
    // Error answers carry no object: they pass unchecked.
    let mut h = host("GET", "/orders/7", Some(alice()));
    let mut filter = Filter::new(&policy);
    filter.on_request_headers(&mut h, true);
    h.response_headers = vec![(":status".into(), "404".into())];
    assert_eq!(filter.on_response_headers(&mut h, false), Verdict::Continue);
    assert_eq!(filter.on_response_body(&mut h, 3, true), Verdict::Continue);
    assert!(h.sent.is_none());
}
