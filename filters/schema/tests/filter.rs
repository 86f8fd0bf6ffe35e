//! The schema filter's response checks driven through the fake host: what is held, cut,
//! passed or refused, by status, content type and body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::rc::Rc;

use meshward_core::Policy;
use meshward_host::FakeHost;
use meshward_runtime::{Filter, Verdict};
use meshward_schema::SchemaPolicy;
use serde_json::{json, Value};

fn policy(mode: &str) -> Rc<SchemaPolicy> {
    let doc = json!({
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/accounts/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "get": {"operationId": "get_account", "responses": {
                "200": {"content": {"application/json": {"schema": {"type": "object", "required": ["id"], "properties": {
                    "id": {"type": "integer"}, "email": {"type": "string", "x-data-class": "pii"}}}}}},
                "204": {"description": "nothing to say"}}}}}
    });
    let config = json!({"mode": mode, "openapi": doc, "response": {"validate": true, "data_classes": {"pii": "strip"}}}).to_string();
    Rc::new(SchemaPolicy::configure(config.as_bytes(), &FakeHost::default()).unwrap())
}

/// What the client gets for an answer: the verdicts, the body that goes out, the local reply.
struct Outcome {
    headers: Verdict,
    body: Option<Verdict>,
    sent_body: Vec<u8>,
    content_length: Option<String>,
    replaced_with: Option<u16>,
}

fn answer(policy: &Rc<SchemaPolicy>, status: &str, content_type: Option<&str>, body: &[u8]) -> (Outcome, FakeHost) {
    let mut h = FakeHost::with_request(&[(":method", "GET"), (":path", "/accounts/1")]);
    let mut filter = Filter::new(policy);
    assert_eq!(filter.on_request_headers(&mut h, true), Verdict::Continue);
    h.response_headers = vec![(":status".into(), status.into()), ("content-length".into(), body.len().to_string())];
    if let Some(ct) = content_type {
        h.response_headers.push(("content-type".into(), ct.into()));
    }
    let headers = filter.on_response_headers(&mut h, body.is_empty());
    let replaced_with = h.sent.as_ref().map(|s| s.status);
    let body_verdict = if body.is_empty() || replaced_with.is_some() {
        None
    } else {
        h.response_body = body.to_vec();
        Some(filter.on_response_body(&mut h, body.len(), true))
    };
    let content_length = h.response_headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.clone());
    (Outcome { headers, body: body_verdict, sent_body: h.response_body.clone(), content_length, replaced_with }, h)
}

#[test]
fn answers_by_status_content_type_and_body() {
    let enforce = policy("enforce");
    let full = br#"{"id": 1, "email": "a@b"}"#;

    // Tagged fields are cut and the length header goes (the body shrank).
    let (o, h) = answer(&enforce, "200", Some("application/json"), full);
    assert_eq!((o.headers, o.body), (Verdict::Continue, Some(Verdict::Continue)));
    assert_eq!(serde_json::from_slice::<Value>(&o.sent_body).unwrap(), json!({"id": 1}));
    assert_eq!(o.content_length, None);
    assert_eq!(h.counter("meshward_schema_stripped_total"), 1);

    // A body that breaks the contract resets the stream (a denial after the status went out).
    let (o, h) = answer(&enforce, "200", Some("application/json"), br#"{"id": "one"}"#);
    assert_eq!(o.body, Some(Verdict::Pause));
    assert_eq!(h.counter("meshward_schema_denied_total.route.get_account.reason.response_violation"), 1);

    // An undeclared status or content type is replaced before anything leaves.
    for (status, ct) in [("201", Some("application/json")), ("200", Some("text/html"))] {
        let (o, _) = answer(&enforce, status, ct, full);
        assert_eq!((o.headers, o.replaced_with), (Verdict::Pause, Some(502)), "{status} {ct:?}");
    }

    // 204 declares no content: an empty answer passes; errors pass unread.
    let (o, _) = answer(&enforce, "204", None, b"");
    assert_eq!((o.headers, o.replaced_with), (Verdict::Continue, None));
    let (o, _) = answer(&enforce, "500", Some("text/plain"), b"boom");
    assert_eq!((o.headers, o.body, o.replaced_with), (Verdict::Continue, Some(Verdict::Continue), None));
    assert_eq!(o.sent_body, b"boom");
}

#[test]
fn shadow_mode_counts_what_it_would_cut_and_changes_nothing() {
    let shadow = policy("shadow");
    let full = br#"{"id": 1, "email": "a@b"}"#;
    let (o, h) = answer(&shadow, "200", Some("application/json"), full);
    assert_eq!((o.headers, o.body), (Verdict::Continue, Some(Verdict::Continue)));
    assert_eq!(o.sent_body, full);
    assert_eq!(o.content_length.as_deref(), Some("25"));
    assert_eq!(h.counter("meshward_schema_shadow_stripped_total"), 1);
    // A broken answer is counted, not cut off.
    let (o, h) = answer(&shadow, "200", Some("application/json"), br#"{"id": "one"}"#);
    assert_eq!(o.body, Some(Verdict::Continue));
    assert_eq!(h.counter("meshward_schema_shadow_denied_total.route.get_account.reason.response_violation"), 1);
}
