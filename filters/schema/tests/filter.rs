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

fn orders_policy() -> Rc<SchemaPolicy> {
    let order = json!({"type": "object", "required": ["product_id", "quantity"], "properties": {
        "product_id": {"type": "integer"}, "quantity": {"type": "integer", "maximum": 50}}});
    let doc = json!({
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {
            "/orders": {"post": {"operationId": "create", "requestBody": {"required": true,
                "content": {"application/json": {"schema": order}}}, "responses": {"201": {"description": "ok"}}}},
            "/orders/{id}": {"get": {"operationId": "get", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "ok"}}},
                "patch": {"operationId": "update", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "requestBody": {"content": {"application/json": {"schema": order}}}, "responses": {"200": {"description": "ok"}}}}}
    });
    Rc::new(SchemaPolicy::configure(json!({"openapi": doc}).to_string().as_bytes(), &FakeHost::default()).unwrap())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One request in a given wire form: `None` when it goes on to the upstream, else the reason
/// of the local reply. `body: None` = the headers end the stream.
fn outcome(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Option<String> {
    let mut all = vec![(":method", method), (":path", path)];
    all.extend_from_slice(headers);
    let mut h = FakeHost::with_request(&all);
    let policy = orders_policy();
    let mut filter = Filter::new(&policy);
    let mut verdict = filter.on_request_headers(&mut h, body.is_none());
    if let (Some(body), None) = (body, &h.sent) {
        h.request_body = body.to_vec();
        verdict = filter.on_request_body(&mut h, body.len(), true);
    }
    match &h.sent {
        Some(sent) => Some(serde_json::from_slice::<Value>(&sent.body).unwrap()["reason"].as_str().unwrap().to_string()),
        None => {
            assert_eq!(verdict, Verdict::Continue);
            None
        }
    }
}

/// (name, method, path, headers, body, expected denial reason).
type Form<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, Option<&'a [u8]>, Option<String>);

#[test]
fn every_wire_form_is_checked_alike() {
    let good = br#"{"product_id": 1, "quantity": 2}"#.as_slice();
    let bad = br#"{"product_id": 1, "quantity": 900}"#.as_slice();
    let len = |b: &[u8]| b.len().to_string();
    let (good_len, bad_len) = (len(good), len(bad));
    let json = ("content-type", "application/json");
    let chunked = ("transfer-encoding", "chunked");
    let gz = ("content-encoding", "gzip");
    let (good_gz, bad_gz) = (gzip(good), gzip(bad));
    let violation = Some("schema_violation".to_string());
    let reason = |r: &str| Some(r.to_string());
    let cases: Vec<Form> = vec![
        ("content-length", "POST", "/orders", vec![json, ("content-length", &good_len)], Some(good), None),
        ("content-length, invalid", "POST", "/orders", vec![json, ("content-length", &bad_len)], Some(bad), violation.clone()),
        ("chunked", "POST", "/orders", vec![json, chunked], Some(good), None),
        ("chunked, invalid", "POST", "/orders", vec![json, chunked], Some(bad), violation.clone()),
        ("h2 without length", "POST", "/orders", vec![json], Some(good), None),
        ("h2 without length, invalid", "POST", "/orders", vec![json], Some(bad), violation.clone()),
        ("h2, empty body where one is required", "POST", "/orders", vec![json], Some(b""), reason("missing_body")),
        ("no body where one is required", "POST", "/orders", vec![json], None, reason("missing_body")),
        ("optional body, chunked, invalid", "PATCH", "/orders/1", vec![json, chunked], Some(bad), violation.clone()),
        ("optional body, h2, invalid", "PATCH", "/orders/1", vec![json], Some(bad), violation.clone()),
        ("optional body, h2, empty", "PATCH", "/orders/1", vec![], Some(b""), None),
        ("optional body, chunked, wrong type", "PATCH", "/orders/1", vec![("content-type", "text/plain"), chunked], Some(b"x"), reason("unsupported_media_type")),
        ("body where none belongs, chunked", "GET", "/orders/1", vec![chunked], Some(b"{}"), reason("unexpected_body")),
        ("h2 GET with an empty data frame", "GET", "/orders/1", vec![], Some(b""), None),
        ("gzip", "POST", "/orders", vec![json, gz], Some(&good_gz), None),
        ("gzip, invalid inside", "POST", "/orders", vec![json, gz, chunked], Some(&bad_gz), violation.clone()),
        ("gzip that is not", "POST", "/orders", vec![json, gz], Some(good), reason("invalid_encoding")),
        ("brotli", "POST", "/orders", vec![json, ("content-encoding", "br")], Some(good), reason("unsupported_encoding")),
        ("duplicate member", "POST", "/orders", vec![json], Some(br#"{"product_id": 1, "quantity": 2, "quantity": 900}"#), reason("ambiguous_json")),
        ("case-variant member", "POST", "/orders", vec![json], Some(br#"{"product_id": 1, "quantity": 2, "Quantity": 900}"#), reason("ambiguous_json")),
        ("escaped duplicate", "POST", "/orders", vec![json], Some(br#"{"product_id": 1, "quantity": 2, "quantit\u0079": 900}"#), reason("ambiguous_json")),
        ("method override header", "POST", "/orders", vec![json, ("x-http-method-override", "DELETE")], Some(good), reason("method_override")),
        ("method override parameter", "POST", "/orders?_method=DELETE", vec![json], Some(good), reason("method_override")),
        ("content-type twice", "POST", "/orders", vec![json, ("content-type", "text/plain")], Some(good), reason("ambiguous_header")),
        ("HEAD is GET", "HEAD", "/orders/1", vec![], None, None),
        ("HEAD checks GET's parameters", "HEAD", "/orders/x", vec![], None, reason("invalid_parameter")),
        ("trailing slash", "POST", "/orders/", vec![json], Some(bad), violation.clone()),
        ("other case", "POST", "/ORDERS", vec![json], Some(bad), violation.clone()),
        ("path parameter", "PATCH", "/orders/1;x=y", vec![json], Some(bad), reason("invalid_path")),
    ];
    for (name, method, path, headers, body, want) in cases {
        assert_eq!(outcome(method, path, &headers, body), want, "{name}");
    }
}

#[test]
fn routes_outside_the_contract_are_counted_under_their_shape() {
    let shadow = policy("shadow");
    let mut h = FakeHost::default();
    for (method, path, counter) in [
        ("GET", "/admin/users/42?token=x", "meshward_schema_shadow_denied_total.route.GET-admin-users-_v.reason.unknown_route"),
        ("GET", "/admin/users/43", "meshward_schema_shadow_denied_total.route.GET-admin-users-_v.reason.unknown_route"),
        ("DELETE", "/accounts/7", "meshward_schema_shadow_denied_total.route.DELETE-accounts-_v.reason.method_not_allowed"),
        ("GET", "/accounts/7", "meshward_schema_allowed_total.route.get_account"),
    ] {
        h.request_headers = vec![(":method".into(), method.into()), (":path".into(), path.into())];
        let mut filter = Filter::new(&shadow);
        assert_eq!(filter.on_request_headers(&mut h, true), Verdict::Continue, "{method} {path}");
        filter.on_done(&mut h);
        meshward_core::stats::flush_decisions(&mut h);
        assert!(h.counter(counter) >= 1, "{method} {path}: {:?}", h.counters);
    }
    assert_eq!(h.counter("meshward_schema_shadow_denied_total.route.GET-admin-users-_v.reason.unknown_route"), 2);
}
