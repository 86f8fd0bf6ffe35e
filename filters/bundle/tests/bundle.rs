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
        (json!([{"schema": {}}]), "stages[0].schema: set exactly one of `openapi`"),
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
