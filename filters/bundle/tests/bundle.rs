//! The bundle through the fake host: stages in order, the principal handed over in memory,
//! shadow per stage, configuration errors that name the stage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use meshward_bundle_filter::Bundle;
use meshward_core::stats::flush_decisions;
use meshward_host::FakeHost;
use meshward_jwt::testkit::{local_config, TestKeys};
use meshward_runtime::{Plan, Verdict};
use serde_json::{json, Value};

fn bundle(stages: Value) -> Result<Bundle, String> {
    Bundle::configure(json!({"stages": stages}).to_string().as_bytes(), &FakeHost::default()).map_err(|e| e.to_string())
}

fn jwt_stage(keys: &TestKeys) -> Value {
    let mut cfg: Value = serde_json::from_str(&local_config(&keys.jwks(), json!({}))).unwrap();
    cfg["rules"] = json!([{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]);
    cfg
}

fn ownership_stage(mode: &str) -> Value {
    json!({"mode": mode, "rules": [{"name": "t", "match": {"template": "/tenants/{tenant}/x"}, "owner": [{"path_param": "tenant", "claim": "tenant"}]}]})
}

fn run(bundle: &Bundle, path: &str, token: &str) -> (Verdict, FakeHost) {
    let bearer = format!("Bearer {token}");
    // Counts an earlier request left in this thread's VM state are not this request's.
    flush_decisions(&mut FakeHost::default());
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", path), ("authorization", &bearer)]);
    let verdict = bundle.new_filter().on_request_headers(&mut host, true);
    // Allowed decisions are written when the runtime flushes (every second in Envoy).
    flush_decisions(&mut host);
    (verdict, host)
}

#[test]
fn stages_run_in_order_with_the_principal_handed_over() {
    let keys = TestKeys::new();
    let b = bundle(json!([{"jwt": jwt_stage(&keys)}, {"ownership": ownership_stage("enforce")}])).unwrap();
    let token = keys.sign("ES256", Some("es"), &TestKeys::claims());
    let (verdict, host) = run(&b, "/tenants/acme/x", &token);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(host.counter("meshward_jwt_allowed_total"), 1);
    assert_eq!(host.counter("meshward_ownership_allowed_total.route.t"), 1);
    let (verdict, host) = run(&b, "/tenants/globex/x", &token);
    assert_eq!(verdict, Verdict::Pause);
    assert_eq!(host.sent.as_ref().unwrap().status, 403);
    assert_eq!(host.counter("meshward_ownership_denied_total.route.t.reason.tenant_boundary"), 1);
    // The first enforced denial answers: a bad token never reaches the ownership stage.
    let (verdict, host) = run(&b, "/tenants/acme/x", "not.a.token");
    assert_eq!(verdict, Verdict::Pause);
    assert_eq!(host.sent.as_ref().unwrap().status, 401);
    assert!(host.counters.keys().all(|k| !k.starts_with("meshward_ownership")));
}

#[test]
fn shadow_is_per_stage() {
    let keys = TestKeys::new();
    let b = bundle(json!([{"jwt": jwt_stage(&keys)}, {"ownership": ownership_stage("shadow")}])).unwrap();
    let token = keys.sign("ES256", Some("es"), &TestKeys::claims());
    let (verdict, host) = run(&b, "/tenants/globex/x", &token);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(host.counter("meshward_ownership_shadow_denied_total.route.t.reason.tenant_boundary"), 1);
    let (verdict, _) = run(&b, "/tenants/acme/x", "bad");
    assert_eq!(verdict, Verdict::Pause, "the jwt stage still enforces");
}

#[test]
fn configuration_errors_name_the_stage() {
    let cases = [
        (json!([]), "stages: at least one stage"),
        (json!([{"jwt": {}, "ownership": {}}]), "stages[0]: must be an object with exactly one key"),
        (json!([{"schemas": {}}]), "stages[0]: unknown stage `schemas`"),
        (json!([{"schema": {"contract": {"version": 2}}}]), "stages[0].schema.contract.version: 2 is not this module's contract version 1"),
        (json!([{"ownership": {"rules": []}}]), "stages[0].ownership.rules: at least one rule"),
        (json!([{"ownership": {"rulez": []}}]), "stages[0].ownership.rulez: unknown field"),
        (json!([{"ownership": ownership_stage("enforce")}, {"ownership": ownership_stage("enforce")}]), "stages[1].ownership: a second `ownership` stage"),
    ];
    for (stages, want) in cases {
        let err = bundle(stages.clone()).err().unwrap_or_else(|| panic!("accepted {stages}"));
        assert!(err.contains(want), "{stages}: {err}");
    }
    let err = Bundle::configure(br#"{"stages": [], "mode": "x"}"#, &FakeHost::default()).err().unwrap().to_string();
    assert!(err.contains("unknown field `mode`"), "{err}");
}

#[test]
fn audit_records_every_stage_and_chain_per_vm() {
    use meshward_core::audit::{verify, AUDIT_PROPERTY};
    use meshward_runtime::Audit;
    use std::rc::Rc;
    let keys = TestKeys::new();
    // Signed with a key the VM reads from its environment (a secret the log store never sees).
    let (private, public, _) = meshward_core::audit::signing::key_pair([42; 32]);
    let signing = json!({"key": {"environment_variable": "MESHWARD_AUDIT_KEY"}, "every": 2});
    let config = json!({"audit": {"records": "writes", "signing": signing}, "stages": [{"jwt": jwt_stage(&keys)}, {"ownership": ownership_stage("enforce")}]});
    let b = Bundle::configure(config.to_string().as_bytes(), &FakeHost::default()).unwrap();
    assert!(Audit::new(b.audit().unwrap(), "f00d".into(), &|_| None).unwrap_err().to_string().contains("\"MESHWARD_AUDIT_KEY\" is not set"));
    let audit = Rc::new(Audit::new(b.audit().unwrap(), "f00d".into(), &|name| (name == "MESHWARD_AUDIT_KEY").then(|| private.clone())).unwrap());
    let token = keys.sign("ES256", Some("es"), &TestKeys::claims());
    let bearer = format!("Bearer {token}");
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    // (method, path, status the request ends with) → the record's stage decisions, or no record
    let mut lines = Vec::new();
    let rows = [
        ("POST", "/tenants/acme/x?secret=s3cr3t", 201, Some(json!([["jwt", "allowed", null], ["ownership", "allowed", null]]))),
        ("GET", "/tenants/acme/x", 200, None),
        ("DELETE", "/tenants/globex/x", 403, Some(json!([["jwt", "allowed", null], ["ownership", "denied", "tenant_boundary"]]))),
    ];
    for (method, path, status, stages) in rows {
        let mut host = FakeHost::with_request(&[(":method", method), (":path", path), ("authorization", &bearer), ("traceparent", traceparent), ("x-request-id", "r-9")]);
        host.properties.insert(vec!["xds".into(), "node".into(), "id".into()], b"sidecar~10.0.0.7~orders-7d9f~orders".to_vec());
        let mut filter = b.new_filter().auditing(Some(Rc::clone(&audit)));
        filter.on_request_headers(&mut host, true);
        host.properties.insert(vec!["response".into(), "code".into()], i64::from(status).to_le_bytes().to_vec());
        host.properties.insert(vec!["request".into(), "duration".into()], 1_755_101_i64.to_le_bytes().to_vec());
        filter.on_log(&mut host);
        let written = host.properties.get(&vec![AUDIT_PROPERTY.to_string()]).map(|b| String::from_utf8(b.clone()).unwrap());
        let Some(want) = stages else {
            assert_eq!(written, None, "{method} is not a write");
            continue;
        };
        let line = written.unwrap();
        let record: Value = serde_json::from_str(&line).unwrap();
        let got: Vec<Value> = record["stages"].as_array().unwrap().iter().map(|s| json!([s["stage"], s["decision"], s["reason"]])).collect();
        assert_eq!(Value::Array(got), want, "{method} {path}");
        assert_eq!(record["status"], json!(status));
        assert_eq!(record["latency_us"], json!(1755));
        assert_eq!((record["subject"].as_str(), record["tenant"].as_str()), (Some("alice"), Some("acme")));
        assert_eq!(record["traceparent"], json!(traceparent));
        assert_eq!(record["request_id"], json!("r-9"));
        assert_eq!(record["policy"], json!("f00d"));
        assert_eq!(record["objects"], json!({"tenant": path.split('/').nth(2).unwrap()}));
        assert!(record["producer"].as_str().unwrap().starts_with("sidecar~10.0.0.7~orders-7d9f~orders/"), "{record}");
        assert!(!line.contains(&token) && !line.contains("s3cr3t") && !line.contains("Bearer"), "no token or query in {line}");
        lines.push(line);
    }
    let verified = verify(&[("audit".into(), lines.join("\n"))], &[]);
    assert_eq!((verified.records, verified.findings.len()), (2, 0), "{:?}", verified.findings);
    let key = meshward_core::audit::signing::VerifyingKey::parse(&public).unwrap();
    let verified = verify(&[("audit".into(), lines.join("\n"))], &[key]);
    assert_eq!((verified.findings.len(), verified.unsigned_tail.len()), (0, 1), "the first record signed, the second not yet: {verified:?}");
    assert!(lines[0].contains("\"signature\"") && !lines[0].contains(&private));
    let err = Bundle::configure(br#"{"audit": {"records": "some"}, "stages": [{"ownership": {"rules": [{"match": {"prefix": "/"}, "public": true}]}}]}"#, &FakeHost::default()).err().unwrap().to_string();
    assert!(err.starts_with("audit") && err.contains("unknown variant `some`"), "{err}");
}

#[test]
fn grpc_calls_are_refused_in_grpc_form() {
    let keys = TestKeys::new();
    let b = bundle(json!([{"jwt": jwt_stage(&keys)}])).unwrap();
    // (content-type, expected: gRPC answer?)
    for (content_type, grpc) in [("application/grpc", true), ("application/grpc+proto", true), ("application/grpc-web", false), ("application/json", false)] {
        let mut host = FakeHost::with_request(&[(":method", "POST"), (":path", "/demo.Echo/Say"), ("content-type", content_type)]);
        assert_eq!(b.new_filter().on_request_headers(&mut host, false), Verdict::Pause);
        let sent = host.sent.as_ref().unwrap();
        if grpc {
            assert_eq!((sent.status, sent.header("grpc-status")), (200, Some("16")), "{content_type}");
            assert_eq!(sent.header("meshward-reason"), Some("missing_token"));
            assert_eq!(sent.header("www-authenticate"), Some("Bearer realm=\"meshward\""));
            assert!(sent.body.is_empty(), "trailers-only");
        } else {
            assert_eq!((sent.status, sent.header("grpc-status")), (401, None), "{content_type}");
        }
    }
}
