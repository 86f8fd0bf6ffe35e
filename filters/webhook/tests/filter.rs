//! The webhook filter driven through the fake host: body buffering, replay across workers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use meshward_core::Policy;
use meshward_host::{FakeHost, SharedStore};
use meshward_runtime::{Filter, Verdict};
use meshward_webhook::WebhookPolicy;
use serde_json::{json, Value};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
const BODY: &[u8] = b"Hello, World!";

fn setup(extra: Value, shadow: bool) -> (Rc<WebhookPolicy>, FakeHost) {
    let mut endpoint = json!({"name": "gh", "match": {"path": "/hooks/github"}, "scheme": "github",
        "secrets": [{"inline_string": GITHUB_SECRET}], "max_body_bytes": 64});
    endpoint.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let config = json!({"mode": if shadow { "shadow" } else { "enforce" }, "endpoints": [endpoint]}).to_string();
    let mut root = FakeHost::default();
    let policy = Rc::new(WebhookPolicy::configure(config.as_bytes(), &root).unwrap());
    WebhookPolicy::start(&policy, &mut root);
    (policy, root)
}

/// A worker's host: same shared data as every other worker.
fn worker(shared: &SharedStore, delivery: &str, signature: &str) -> FakeHost {
    let mut host = FakeHost::with_request(&[
        (":method", "POST"),
        (":path", "/hooks/github"),
        ("x-github-delivery", delivery),
        ("x-hub-signature-256", signature),
    ]);
    host.shared = Rc::clone(shared);
    host
}

/// Runs a request whose body arrives in two chunks; returns the final verdict.
fn deliver(policy: &Rc<WebhookPolicy>, host: &mut FakeHost, body: &[u8]) -> Verdict {
    let mut filter = Filter::new(policy);
    if filter.on_request_headers(host, false) == Verdict::Pause {
        return Verdict::Pause; // refused on the headers alone
    }
    let half = body.len() / 2;
    host.request_body = body[..half].to_vec();
    assert_eq!(filter.on_request_body(host, half, false), Verdict::Pause, "the body is held until complete");
    host.request_body = body.to_vec();
    filter.on_request_body(host, body.len(), true)
}

fn reason(host: &FakeHost) -> String {
    let body: Value = serde_json::from_slice(&host.sent.as_ref().unwrap().body).unwrap();
    body["reason"].as_str().unwrap().to_string()
}

#[test]
fn signed_delivery_passes_once_across_all_workers() {
    let (policy, root) = setup(json!({}), false);
    let mut first = worker(&root.shared, "d-1", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut first, BODY), Verdict::Continue);
    assert!(first.sent.is_none());
    // The same delivery on another worker thread is a replay.
    let mut second = worker(&root.shared, "d-1", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut second, BODY), Verdict::Pause);
    assert_eq!(second.sent.as_ref().unwrap().status, 401);
    assert_eq!(reason(&second), "replayed");
    assert_eq!(second.counter("meshward_webhook_denied_total.reason.replayed"), 1);
    // A different delivery id with the same (valid) signature is a new delivery.
    let mut third = worker(&root.shared, "d-2", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut third, BODY), Verdict::Continue);
}

#[test]
fn tampered_body_and_oversized_body() {
    let (policy, root) = setup(json!({}), false);
    let mut host = worker(&root.shared, "d-3", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut host, b"Hello, World?"), Verdict::Pause);
    assert_eq!(reason(&host), "bad_signature");
    // A rejected delivery is not remembered: the genuine one still passes.
    let mut host = worker(&root.shared, "d-3", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Continue);

    let mut host = worker(&root.shared, "d-4", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut host, &[b'x'; 100]), Verdict::Pause);
    assert_eq!(host.sent.as_ref().unwrap().status, 413);
    assert_eq!(reason(&host), "body_too_large");
}

#[test]
fn missing_signature_is_refused_before_the_body() {
    let (policy, _root) = setup(json!({}), false);
    let mut host = FakeHost::with_request(&[(":method", "POST"), (":path", "/hooks/github")]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, false), Verdict::Pause);
    assert_eq!(reason(&host), "missing_signature");
}

#[test]
fn headers_only_request_is_verified_against_the_empty_body() {
    let (policy, root) = setup(json!({}), false);
    let mut host = worker(&root.shared, "d-5", GITHUB_SIG);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Pause);
    assert_eq!(reason(&host), "bad_signature");
}

#[test]
fn unmatched_routes_are_denied_unless_allowed() {
    let (policy, _root) = setup(json!({}), false);
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/other")]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Pause);
    assert_eq!(host.sent.as_ref().unwrap().status, 403);
    assert_eq!(reason(&host), "route_not_covered");
}

#[test]
fn cas_races_are_retried_and_a_full_bucket_fails_closed() {
    let (policy, root) = setup(json!({}), false);
    let mut host = worker(&root.shared, "d-6", GITHUB_SIG);
    host.cas_failures = 3;
    assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Continue);

    // One bucket of 16 slots: the 17th live delivery is refused, not silently forgotten.
    let (policy, root) = setup(json!({"replay_cache_entries": 16}), false);
    for i in 0..16 {
        let mut host = worker(&root.shared, &format!("id-{i}"), GITHUB_SIG);
        assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Continue, "delivery {i}");
    }
    let mut host = worker(&root.shared, "id-16", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Pause);
    assert_eq!(host.sent.as_ref().unwrap().status, 503);
    assert_eq!(reason(&host), "replay_cache_full");
    // Once the remembered ids expire, there is room again.
    let mut host = worker(&root.shared, "id-16", GITHUB_SIG);
    host.now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 86_401);
    assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Continue);
}

#[test]
fn shadow_mode_counts_but_forwards() {
    let (policy, root) = setup(json!({}), true);
    let mut host = worker(&root.shared, "d-7", "sha256=00");
    assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Continue);
    assert!(host.sent.is_none());
    assert_eq!(host.counter("meshward_webhook_shadow_denied_total.reason.bad_signature"), 1);
}

#[test]
fn secret_from_vm_environment() {
    let config = json!({"endpoints": [{"name": "gh", "match": {"prefix": "/"}, "scheme": "github",
        "secrets": [{"environment_variable": "GITHUB_WEBHOOK_SECRET"}]}]})
    .to_string();
    let mut root = FakeHost::default();
    assert!(WebhookPolicy::configure(config.as_bytes(), &root).is_err());
    root.env.insert("GITHUB_WEBHOOK_SECRET".into(), GITHUB_SECRET.into());
    let policy = Rc::new(WebhookPolicy::configure(config.as_bytes(), &root).unwrap());
    let mut host = worker(&root.shared, "d-8", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Continue);
}
