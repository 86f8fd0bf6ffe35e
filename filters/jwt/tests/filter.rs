//! The JWT filter driven through the fake host: the same code path as in Envoy, minus the
//! hostcalls (the proxy-wasm glue only forwards to `Filter`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::rc::Rc;
use std::time::Duration;

use meshward_core::stats::flush_decisions;
use meshward_core::{Policy, PRINCIPAL_PROPERTY};
use meshward_host::{FakeHost, Host, HttpCallResponse, LogLevel};
use meshward_jwt::testkit::{local_config, TestKeys};
use meshward_jwt::JwtPolicy;
use meshward_runtime::{Filter, Verdict};
use serde_json::{json, Value};

fn policy(config: &str) -> Rc<JwtPolicy> {
    Rc::new(JwtPolicy::configure(config.as_bytes(), &FakeHost::default()).unwrap())
}

fn request(path: &str, extra: &[(&str, &str)]) -> FakeHost {
    // Counts an earlier test left in this thread's VM state (tests share one thread on wasm32)
    // are not this request's.
    flush_decisions(&mut FakeHost::default());
    let mut headers = vec![(":method", "GET"), (":path", path), ("x-request-id", "req-1")];
    headers.extend_from_slice(extra);
    FakeHost::with_request(&headers)
}

fn body(host: &FakeHost) -> Value {
    serde_json::from_slice(&host.sent.as_ref().unwrap().body).unwrap()
}

#[test]
fn valid_token_publishes_principal_sets_claim_headers_and_strips_spoofs() {
    let keys = TestKeys::new();
    let policy = policy(&local_config(&keys.jwks(), json!({})));
    let token = keys.sign("ES256", Some("es"), &TestKeys::claims());
    let bearer = format!("Bearer {token}");
    let mut host = request("/api/orders", &[("authorization", &bearer), ("x-jwt-sub", "admin")]);
    let mut filter = Filter::new(&policy);
    assert_eq!(filter.on_request_headers(&mut host, true), Verdict::Continue);
    assert!(host.sent.is_none());
    assert_eq!(host.request_header("x-jwt-sub").as_deref(), Some("alice"));
    assert_eq!(host.request_headers.iter().filter(|(n, _)| n == "x-jwt-sub").count(), 1);
    assert_eq!(host.request_header("authorization"), None, "forward: false removes the token");
    let published: Value = serde_json::from_slice(&host.properties[&vec![PRINCIPAL_PROPERTY.to_string()]]).unwrap();
    assert_eq!(published["subject"], "alice");
    assert_eq!(published["tenant"], "acme");
    assert_eq!(filter.request().principal.as_ref().unwrap().subject.as_deref(), Some("alice"));
    // Allowed decisions are written when the runtime flushes (every second in Envoy).
    flush_decisions(&mut host);
    assert_eq!(host.counter("meshward_jwt_allowed_total"), 1);
}

#[test]
fn forward_keeps_the_token() {
    let keys = TestKeys::new();
    let policy = policy(&local_config(&keys.jwks(), json!({"forward": true})));
    let bearer = format!("Bearer {}", keys.sign("HS256", Some("hs"), &TestKeys::claims()));
    let mut host = request("/api/x", &[("authorization", &bearer)]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);
    assert_eq!(host.request_header("authorization"), Some(bearer));
}

#[test]
fn denial_sends_401_json_and_counts_and_logs_once() {
    let keys = TestKeys::new();
    let policy = policy(&local_config(&keys.jwks(), json!({})));
    let mut host = request("/api/orders?token=secret", &[("x-jwt-sub", "admin")]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Pause);
    let sent = host.sent.clone().unwrap();
    assert_eq!(sent.status, 401);
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("www-authenticate"), Some("Bearer realm=\"meshward\""));
    assert_eq!(body(&host), json!({"error": "a bearer token is required", "reason": "missing_token", "request_id": "req-1"}));
    assert_eq!(host.counter("meshward_jwt_denied_total.reason.missing_token"), 1);
    flush_decisions(&mut host);
    assert_eq!(host.counter("meshward_jwt_allowed_total"), 0);
    // The spoofed claim header is gone even though the request was denied.
    assert_eq!(host.request_header("x-jwt-sub"), None);
    let logs: Vec<_> = host.logs().into_iter().filter(|(_, l)| l.contains("\"decision\"")).collect();
    assert_eq!(logs.len(), 1);
    let line: Value = serde_json::from_str(logs[0].1.trim_start_matches("meshward_jwt: ")).unwrap();
    assert_eq!(line["reason"], "missing_token");
    assert_eq!(line["path"], "/api/orders", "query strings (which may hold secrets) are not logged");
    assert_eq!(line["request_id"], "req-1");
}

#[test]
fn wrong_audience_is_403_with_invalid_token_challenge() {
    let keys = TestKeys::new();
    let policy = policy(&local_config(&keys.jwks(), json!({})));
    let mut claims = TestKeys::claims();
    claims.insert("aud".into(), json!("payments-api"));
    let bearer = format!("Bearer {}", keys.sign("EdDSA", Some("ed"), &claims));
    let mut host = request("/api/x", &[("authorization", &bearer)]);
    Filter::new(&policy).on_request_headers(&mut host, true);
    let sent = host.sent.clone().unwrap();
    assert_eq!(sent.status, 403);
    assert!(sent.header("www-authenticate").unwrap().contains("error=\"invalid_token\""));
    assert_eq!(body(&host)["reason"], "wrong_audience");
}

#[test]
fn unmatched_routes_and_ambiguous_paths_are_denied() {
    let keys = TestKeys::new();
    let policy = policy(&local_config(&keys.jwks(), json!({})));
    for (path, status, reason) in [("/admin", 403, "route_not_covered"), ("/public%2f..%2fapi", 400, "invalid_path"), ("/public/../api/x", 401, "missing_token")] {
        let mut host = request(path, &[]);
        assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Pause, "{path}");
        assert_eq!(host.sent.as_ref().unwrap().status, status, "{path}");
        assert_eq!(body(&host)["reason"], reason, "{path}");
    }
    let mut host = request("/public/info", &[]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);
}

#[test]
fn shadow_mode_counts_and_lets_through() {
    let keys = TestKeys::new();
    let mut config: Value = serde_json::from_str(&local_config(&keys.jwks(), json!({}))).unwrap();
    config["mode"] = json!("shadow");
    let policy = policy(&config.to_string());
    let mut host = request("/api/x", &[("authorization", "Bearer not.a.token")]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);
    assert!(host.sent.is_none());
    assert_eq!(host.counter("meshward_jwt_shadow_denied_total.reason.malformed_token"), 1);
    assert_eq!(host.counter("meshward_jwt_denied_total.reason.malformed_token"), 0);
    assert!(host.logs().iter().any(|(_, l)| l.contains("\"decision\":\"shadow_deny\"")));
}

fn remote_policy() -> Rc<JwtPolicy> {
    policy(
        &json!({
            "providers": {"idp": {"issuer": meshward_jwt::testkit::ISSUER, "audiences": [meshward_jwt::testkit::AUDIENCE],
                "remote_jwks": {"http_uri": {"uri": "https://idp.test/jwks", "cluster": "idp", "timeout": "1s"}, "cache_duration": "60s"}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
        })
        .to_string(),
    )
}

fn jwks_response(jwks: &str) -> HttpCallResponse {
    HttpCallResponse { status: Some(200), headers: vec![], body: jwks.as_bytes().to_vec() }
}

#[test]
fn remote_jwks_lifecycle_through_the_host() {
    let keys = TestKeys::new();
    let policy = remote_policy();
    let mut root = FakeHost::default();

    // Start: tick scheduled, first fetch dispatched to the configured cluster.
    JwtPolicy::start(&policy, &mut root);
    assert_eq!(root.tick_period, Some(Duration::from_secs(1)));
    assert_eq!(root.calls.len(), 1);
    assert_eq!((root.calls[0].cluster.as_str(), root.calls[0].authority.as_str(), root.calls[0].path.as_str()), ("idp", "idp.test", "/jwks"));
    // Not due again while in flight.
    JwtPolicy::on_tick(&policy, &mut root);
    assert_eq!(root.calls.len(), 1);
    let first = root.calls[0].token;
    JwtPolicy::on_http_call_response(&policy, &mut root, first, jwks_response(&keys.jwks()));
    assert_eq!(root.counter("meshward_jwt_jwks_fetch_ok"), 1);

    let bearer = format!("Bearer {}", keys.sign("ES256", Some("es"), &TestKeys::claims()));
    let mut host = request("/x", &[("authorization", &bearer)]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);

    // Rotation: a new kid triggers one on-demand fetch; the request waits, then passes.
    let rotated = TestKeys::new();
    let bearer = format!("Bearer {}", rotated.sign("ES256", Some("es-2026"), &TestKeys::claims()));
    let mut host = request("/x", &[("authorization", &bearer)]);
    let mut filter = Filter::new(&policy);
    assert_eq!(filter.on_request_headers(&mut host, true), Verdict::Pause);
    assert!(host.sent.is_none());
    assert_eq!(host.calls.len(), 1);
    let token = host.calls[0].token;
    filter.on_http_call_response(&mut host, token, jwks_response(&rotated.jwks_with_kids("hs-2026", "es-2026", "ed-2026")));
    assert_eq!(host.resumed, 1);
    assert!(host.sent.is_none());

    // Another unknown kid right after: no second on-demand fetch inside the interval.
    let bearer = format!("Bearer {}", rotated.sign("ES256", Some("es-2027"), &TestKeys::claims()));
    let mut host = request("/x", &[("authorization", &bearer)]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Pause);
    assert!(host.calls.is_empty());
    assert_eq!(body(&host)["reason"], "unknown_kid");

    // Scheduled refresh fails: the last good keys stay.
    root.now += Duration::from_secs(61);
    JwtPolicy::on_tick(&policy, &mut root);
    assert_eq!(root.calls.len(), 2);
    let second = root.calls[1].token;
    JwtPolicy::on_http_call_response(&policy, &mut root, second, HttpCallResponse { status: Some(503), ..Default::default() });
    assert_eq!(root.counter("meshward_jwt_jwks_fetch_failed"), 1);
    assert!(root.logs().iter().any(|(level, l)| *level == LogLevel::Warn && l.contains("keeping the last good key set")));
    let bearer = format!("Bearer {}", rotated.sign("ES256", Some("es-2026"), &TestKeys::claims()));
    let mut host = request("/x", &[("authorization", &bearer)]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);
}

#[test]
fn no_keys_yet_is_a_denial_never_an_allow() {
    let keys = TestKeys::new();
    let policy = remote_policy();
    let bearer = format!("Bearer {}", keys.sign("ES256", Some("es"), &TestKeys::claims()));

    // The fetch this request triggers fails: deny.
    let mut host = request("/x", &[("authorization", &bearer)]);
    let mut filter = Filter::new(&policy);
    assert_eq!(filter.on_request_headers(&mut host, true), Verdict::Pause);
    let token = host.calls[0].token;
    filter.on_http_call_response(&mut host, token, HttpCallResponse::default());
    assert_eq!(host.resumed, 0);
    // Not the caller's fault: 503, retry later.
    let sent = host.sent.as_ref().unwrap();
    assert_eq!((sent.status, sent.header("retry-after")), (503, Some("5")));
    assert_eq!(body(&host)["reason"], "jwks_unavailable");

    // The proxy refuses the call outright (unknown cluster): deny at once.
    let policy = remote_policy();
    let mut host = request("/x", &[("authorization", &bearer)]);
    host.refuse_calls = Some("BadArgument".into());
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Pause);
    assert_eq!(body(&host)["reason"], "jwks_unavailable");
}

#[test]
fn garbage_jwks_does_not_replace_good_keys() {
    let keys = TestKeys::new();
    let policy = remote_policy();
    let mut root = FakeHost::default();
    JwtPolicy::start(&policy, &mut root);
    let first = root.calls[0].token;
    JwtPolicy::on_http_call_response(&policy, &mut root, first, jwks_response(&keys.jwks()));
    root.now += Duration::from_secs(61);
    JwtPolicy::on_tick(&policy, &mut root);
    let second = root.calls[1].token;
    JwtPolicy::on_http_call_response(&policy, &mut root, second, jwks_response("<html>"));
    assert_eq!(root.counter("meshward_jwt_jwks_fetch_failed"), 1);
    let bearer = format!("Bearer {}", keys.sign("ES256", Some("es"), &TestKeys::claims()));
    let mut host = request("/x", &[("authorization", &bearer)]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);
}

/// Two worker VMs of one sidecar: their own policy instances, one shared-data store.
fn two_workers() -> [(Rc<JwtPolicy>, FakeHost); 2] {
    let a = FakeHost::default();
    let mut b = FakeHost::default();
    b.shared = Rc::clone(&a.shared);
    [(remote_policy(), a), (remote_policy(), b)]
}

/// Two workers where the first fetched `keys` and the second started after that.
fn two_workers_with(keys: &TestKeys) -> [(Rc<JwtPolicy>, FakeHost); 2] {
    let [(pa, mut a), (pb, mut b)] = two_workers();
    JwtPolicy::start(&pa, &mut a);
    let token = a.calls[0].token;
    JwtPolicy::on_http_call_response(&pa, &mut a, token, jwks_response(&keys.jwks()));
    JwtPolicy::start(&pb, &mut b);
    [(pa, a), (pb, b)]
}

/// A request on a worker, sharing its store and clock.
fn request_on(worker: &FakeHost, bearer: &str) -> FakeHost {
    let mut host = request("/x", &[("authorization", bearer)]);
    host.shared = Rc::clone(&worker.shared);
    host.now = worker.now;
    host
}

#[test]
fn one_worker_fetches_and_every_worker_uses_the_keys() {
    let keys = TestKeys::new();
    // A worker starting after the first fetched takes the keys from shared data, without a
    // fetch of its own.
    let [(pa, mut a), (pb, mut b)] = two_workers_with(&keys);
    JwtPolicy::on_tick(&pb, &mut b);
    assert_eq!(b.calls.len(), 0);
    let bearer = format!("Bearer {}", keys.sign("ES256", Some("es"), &TestKeys::claims()));
    let mut host = request_on(&b, &bearer);
    assert_eq!(Filter::new(&pb).on_request_headers(&mut host, true), Verdict::Continue);
    assert!(host.calls.is_empty());

    // When the keys are due again, one worker fetches; the lease holds the other back.
    a.now += Duration::from_secs(61);
    b.now += Duration::from_secs(61);
    JwtPolicy::on_tick(&pb, &mut b);
    JwtPolicy::on_tick(&pa, &mut a);
    assert_eq!((a.calls.len(), b.calls.len()), (1, 1));

    // A worker that took the lease and never heard back: the lease expires, another fetches.
    a.now += Duration::from_secs(4);
    JwtPolicy::on_tick(&pa, &mut a);
    assert_eq!(a.calls.len(), 2);
}

#[test]
fn a_rotation_fetched_by_one_worker_reaches_the_other_without_a_second_fetch() {
    let keys = TestKeys::new();
    let [(pa, a), (pb, b)] = two_workers_with(&keys);
    assert_eq!(b.calls.len(), 0, "a new worker starts with the keys already fetched");

    let rotated = TestKeys::new();
    let bearer = format!("Bearer {}", rotated.sign("ES256", Some("es-2026"), &TestKeys::claims()));
    let mut on_a = request_on(&a, &bearer);
    let mut filter = Filter::new(&pa);
    assert_eq!(filter.on_request_headers(&mut on_a, true), Verdict::Pause);
    assert_eq!(on_a.calls.len(), 1);
    let token = on_a.calls[0].token;
    filter.on_http_call_response(&mut on_a, token, jwks_response(&rotated.jwks_with_kids("hs-2026", "es-2026", "ed-2026")));
    assert_eq!(on_a.resumed, 1);

    // Worker B has not ticked yet: the request finds the new keys in shared data at once.
    let mut on_b = request_on(&b, &bearer);
    assert_eq!(Filter::new(&pb).on_request_headers(&mut on_b, true), Verdict::Continue);
    assert!(on_b.calls.is_empty());

    // Unknown kids on B right after: the sidecar's on-demand fetch is spent, B does not fetch.
    let bearer = format!("Bearer {}", rotated.sign("ES256", Some("es-2027"), &TestKeys::claims()));
    let mut on_b = request_on(&b, &bearer);
    assert_eq!(Filter::new(&pb).on_request_headers(&mut on_b, true), Verdict::Pause);
    assert!(on_b.calls.is_empty());
    assert_eq!(body(&on_b)["reason"], "unknown_kid");
}

#[test]
fn a_failed_scheduled_fetch_backs_off_for_every_worker() {
    let [(pa, mut a), (pb, mut b)] = two_workers();
    let fail = || HttpCallResponse { status: Some(503), ..Default::default() };
    // Each VM's own first fetch fails: logged, the shared schedule untouched.
    JwtPolicy::start(&pa, &mut a);
    JwtPolicy::start(&pb, &mut b);
    assert_eq!((a.calls.len(), b.calls.len()), (1, 1));
    let (ta, tb) = (a.calls[0].token, b.calls[0].token);
    JwtPolicy::on_http_call_response(&pa, &mut a, ta, fail());
    JwtPolicy::on_http_call_response(&pb, &mut b, tb, fail());
    assert!(a.logs().iter().any(|(_, l)| l.ends_with("no keys yet: requests are denied")));
    // Then the lease: one retry for the sidecar, whose backoff both workers keep.
    JwtPolicy::on_tick(&pa, &mut a);
    JwtPolicy::on_tick(&pb, &mut b);
    assert_eq!((a.calls.len(), b.calls.len()), (2, 1));
    let token = a.calls[1].token;
    JwtPolicy::on_http_call_response(&pa, &mut a, token, fail());
    assert!(a.logs().iter().any(|(_, l)| l.contains("no keys yet: requests are denied; retry in 1s")));
    JwtPolicy::on_tick(&pb, &mut b);
    assert_eq!(b.calls.len(), 1, "not before the retry is due");
    b.now += Duration::from_secs(1);
    JwtPolicy::on_tick(&pb, &mut b);
    let token = b.calls[1].token;
    JwtPolicy::on_http_call_response(&pb, &mut b, token, fail());
    assert!(b.logs().iter().any(|(_, l)| l.contains("retry in 2s")), "the failure count is shared");
}
