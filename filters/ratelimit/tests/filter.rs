//! The rate-limit filter driven through the fake host: workers sharing state, the global
//! service protocol, failure modes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::rc::Rc;

use meshward_core::{GrpcResponse, Policy, PRINCIPAL_PROPERTY};
use meshward_host::{FakeHost, Host, SharedStore};
use meshward_ratelimit::rls::{self, DescriptorStatus, RateLimitRequest, RateLimitResponse};
use meshward_ratelimit::RateLimitPolicy;
use meshward_runtime::{Filter, Verdict};
use prost::Message;
use serde_json::json;

fn policy(config: serde_json::Value) -> (Rc<RateLimitPolicy>, FakeHost) {
    let mut root = FakeHost::default();
    let policy = Rc::new(RateLimitPolicy::configure(config.to_string().as_bytes(), &root).unwrap());
    RateLimitPolicy::start(&policy, &mut root);
    (policy, root)
}

fn request(shared: &SharedStore, sub: &str) -> FakeHost {
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/api/x")]);
    host.shared = Rc::clone(shared);
    let principal = json!({"provider": "p", "issuer": "i", "subject": sub, "audiences": [], "scopes": [], "tenant": null, "claims": {"sub": sub}});
    host.properties.insert(vec![PRINCIPAL_PROPERTY.to_string()], principal.to_string().into_bytes());
    host
}

#[test]
fn workers_share_one_budget_and_principals_have_their_own() {
    let (policy, root) = policy(json!({"rules": [{"name": "u", "match": {"prefix": "/api/"}, "key": ["subject"], "limit": {"requests": 3, "per": "60s"}}]}));
    let mut verdicts = Vec::new();
    for _ in 0..5 {
        // Each request as if on another worker: separate hosts, one shared store.
        let mut host = request(&root.shared, "alice");
        verdicts.push(Filter::new(&policy).on_request_headers(&mut host, true));
    }
    assert_eq!(verdicts, [Verdict::Continue, Verdict::Continue, Verdict::Continue, Verdict::Pause, Verdict::Pause]);
    let mut bob = request(&root.shared, "bob");
    assert_eq!(Filter::new(&policy).on_request_headers(&mut bob, true), Verdict::Continue);
}

#[test]
fn requests_without_a_principal_skip_principal_rules() {
    let (policy, root) = policy(json!({"rules": [{"name": "u", "match": {"prefix": "/"}, "key": ["subject"], "limit": {"requests": 1, "per": "60s"}}]}));
    for _ in 0..3 {
        let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/api/x")]);
        host.shared = Rc::clone(&root.shared);
        assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);
    }
}

#[test]
fn only_answered_failures_spend_a_failure_budget_and_a_spent_one_refuses_on_arrival() {
    let (policy, root) = policy(json!({"rules": [{"name": "f", "match": {"prefix": "/"}, "key": ["subject"], "counts": "failures",
                                                   "limit": {"requests": 2, "per": "60s"}}]}));
    // (status the request is answered with, verdict on arrival, failures counted so far)
    let rows: [(&str, Verdict, u64); 7] = [
        ("200", Verdict::Continue, 0),
        ("401", Verdict::Continue, 1),
        ("404", Verdict::Continue, 1),
        ("500", Verdict::Continue, 1),
        ("403", Verdict::Continue, 2),
        ("200", Verdict::Pause, 2),
        ("200", Verdict::Pause, 2),
    ];
    let mut counted = 0;
    for (i, (status, want, failures)) in rows.into_iter().enumerate() {
        let mut host = request(&root.shared, "mallory");
        let mut filter = Filter::new(&policy);
        let verdict = filter.on_request_headers(&mut host, true);
        assert_eq!(verdict, want, "row {i}");
        if verdict == Verdict::Continue {
            host.response_headers = vec![(":status".into(), status.into())];
            assert_eq!(filter.on_response_headers(&mut host, true), Verdict::Continue);
        } else {
            assert_eq!(host.sent.as_ref().map(|r| r.status), Some(429), "row {i}");
        }
        counted += host.counter("meshward_ratelimit_failures_counted_total");
        assert_eq!(counted, failures, "row {i}");
    }
    // Another subject has its own budget.
    assert_eq!(Filter::new(&policy).on_request_headers(&mut request(&root.shared, "alice"), true), Verdict::Continue);
}

fn global(failure_mode: &str) -> (Rc<RateLimitPolicy>, FakeHost) {
    policy(json!({"global": {"cluster": "rls", "domain": "d", "failure_mode": failure_mode},
                  "rules": [{"name": "fleet", "match": {"prefix": "/api/"}, "key": ["subject", "header:x-plan"], "scope": "global", "cost": 2}]}))
}

#[test]
fn global_rules_ask_the_service() {
    let (policy, root) = global("allow");
    let mut host = request(&root.shared, "alice");
    host.set_request_header("x-plan", Some("gold"));
    let mut filter = Filter::new(&policy);
    assert_eq!(filter.on_request_headers(&mut host, true), Verdict::Pause);
    let (token, cluster, method, message) = host.grpc_calls[0].clone();
    assert_eq!((cluster.as_str(), method.as_str()), ("rls", "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"));
    let sent = RateLimitRequest::decode(message.as_slice()).unwrap();
    assert_eq!(sent.domain, "d");
    assert_eq!(sent.hits_addend, 2);
    let entries: Vec<(String, String)> = sent.descriptors[0].entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
    assert_eq!(entries, vec![("rule".into(), "fleet".into()), ("subject".into(), "alice".into()), ("header.x-plan".into(), "gold".into())]);

    let over = RateLimitResponse {
        overall_code: rls::CODE_OVER_LIMIT,
        statuses: vec![DescriptorStatus { code: rls::CODE_OVER_LIMIT, current_limit: None, limit_remaining: 0, duration_until_reset: Some(rls::Duration { seconds: 30, nanos: 0 }) }],
    };
    filter.on_grpc_response(&mut host, token, GrpcResponse { status: 0, message: over.encode_to_vec() });
    let sent = host.sent.clone().unwrap();
    assert_eq!(sent.status, 429);
    assert_eq!(sent.header("retry-after"), Some("30"));
    assert_eq!(host.resumed, 0);
}

#[test]
fn service_failures_follow_the_failure_mode() {
    for (mode, resumed, status) in [("allow", 1, None), ("deny", 0, Some(503))] {
        let (policy, root) = global(mode);
        let mut host = request(&root.shared, "alice");
        let mut filter = Filter::new(&policy);
        assert_eq!(filter.on_request_headers(&mut host, true), Verdict::Pause);
        let token = host.grpc_calls[0].0;
        // gRPC status 14 = UNAVAILABLE.
        filter.on_grpc_response(&mut host, token, GrpcResponse { status: 14, message: vec![] });
        assert_eq!(host.resumed, resumed, "{mode}");
        assert_eq!(host.sent.as_ref().map(|s| s.status), status, "{mode}");
        assert_eq!(host.counter("meshward_ratelimit_service_failures_total"), 1);
    }
}
