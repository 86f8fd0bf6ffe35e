//! The webhook filter driven through the fake host: body buffering, replay across workers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use meshward_core::Policy;
use meshward_host::{FakeHost, SharedStore};
use meshward_runtime::{Filter, Verdict};
use meshward_webhook::WebhookPolicy;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

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

/// GitHub's signature over `body` with the test secret.
fn github_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(GITHUB_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!("sha256={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The upstream answers with `status`, then the stream ends.
fn answer(filter: &mut Filter, host: &mut FakeHost, status: &str) -> Verdict {
    host.response_headers = vec![(":status".into(), status.into())];
    let verdict = filter.on_response_headers(host, true);
    filter.on_done(host);
    verdict
}

/// A delivery through its whole life on one worker: the verdict on its body, then the answer.
fn deliver_and_answer(policy: &Rc<WebhookPolicy>, shared: &SharedStore, delivery_id: &str, status: &str) -> (Verdict, FakeHost) {
    let mut host = worker(shared, delivery_id, GITHUB_SIG);
    let mut filter = Filter::new(policy);
    assert_eq!(filter.on_request_headers(&mut host, false), Verdict::Continue);
    host.request_body = BODY.to_vec();
    let verdict = filter.on_request_body(&mut host, BODY.len(), true);
    if verdict == Verdict::Continue {
        assert_eq!(answer(&mut filter, &mut host, status), Verdict::Continue);
    }
    (verdict, host)
}

#[test]
fn an_accepted_delivery_passes_once_across_all_workers() {
    let (policy, root) = setup(json!({}), false);
    let (verdict, first) = deliver_and_answer(&policy, &root.shared, "d-1", "200");
    assert_eq!(verdict, Verdict::Continue);
    assert!(first.sent.is_none());
    // The same delivery on another worker is a replay, even under a fresh (unsigned) delivery id.
    for id in ["d-1", "d-2"] {
        let (verdict, second) = deliver_and_answer(&policy, &root.shared, id, "200");
        assert_eq!(verdict, Verdict::Pause);
        assert_eq!(second.sent.as_ref().unwrap().status, 401);
        assert_eq!(reason(&second), "replayed");
    }
}

#[test]
fn a_delivery_the_upstream_did_not_accept_passes_on_redelivery() {
    // Refused by the upstream (5xx, 4xx), or never answered: the sender's retry must pass.
    for status in ["500", "503", "404", "never"] {
        let (policy, root) = setup(json!({}), false);
        let mut host = worker(&root.shared, "d-1", GITHUB_SIG);
        let mut filter = Filter::new(&policy);
        filter.on_request_headers(&mut host, false);
        host.request_body = BODY.to_vec();
        assert_eq!(filter.on_request_body(&mut host, BODY.len(), true), Verdict::Continue);
        if status == "never" {
            filter.on_done(&mut host); // the client went away before any answer
        } else {
            answer(&mut filter, &mut host, status);
        }
        let (verdict, retry) = deliver_and_answer(&policy, &root.shared, "d-1", "200");
        assert_eq!(verdict, Verdict::Continue, "after {status}: {:?}", retry.sent);
        let (verdict, _) = deliver_and_answer(&policy, &root.shared, "d-1", "200");
        assert_eq!(verdict, Verdict::Pause, "after {status}, the accepted retry is seen");
    }
    // What counts as accepted is configurable.
    let (policy, root) = setup(json!({"accepted_statuses": ["202"]}), false);
    assert_eq!(deliver_and_answer(&policy, &root.shared, "d-1", "200").0, Verdict::Continue);
    assert_eq!(deliver_and_answer(&policy, &root.shared, "d-1", "202").0, Verdict::Continue);
    assert_eq!(deliver_and_answer(&policy, &root.shared, "d-1", "202").0, Verdict::Pause);
}

#[test]
fn a_duplicate_while_the_first_is_in_flight_gets_409() {
    let (policy, root) = setup(json!({"in_flight_seconds": 30}), false);
    let mut first = worker(&root.shared, "d-1", GITHUB_SIG);
    let mut filter = Filter::new(&policy);
    filter.on_request_headers(&mut first, false);
    first.request_body = BODY.to_vec();
    assert_eq!(filter.on_request_body(&mut first, BODY.len(), true), Verdict::Continue);
    let mut duplicate = worker(&root.shared, "d-1", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut duplicate, BODY), Verdict::Pause);
    let sent = duplicate.sent.as_ref().unwrap();
    assert_eq!((sent.status, sent.header("retry-after")), (409, Some("30")));
    assert_eq!(reason(&duplicate), "in_flight");
    answer(&mut filter, &mut first, "204");
    assert_eq!(deliver_and_answer(&policy, &root.shared, "d-1", "200").0, Verdict::Pause, "seen once accepted");
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
    assert_eq!(deliver_and_answer(&policy, &root.shared, "d-3", "200").0, Verdict::Pause, "in flight");

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
    let body = |i: usize| format!("event {i}").into_bytes();
    for i in 0..16 {
        let mut host = worker(&root.shared, "id", &github_signature(&body(i)));
        assert_eq!(deliver(&policy, &mut host, &body(i)), Verdict::Continue, "delivery {i}");
    }
    let mut host = worker(&root.shared, "id", &github_signature(&body(16)));
    assert_eq!(deliver(&policy, &mut host, &body(16)), Verdict::Pause);
    assert_eq!(host.sent.as_ref().unwrap().status, 503);
    assert_eq!(reason(&host), "replay_cache_full");
    // Once the held deliveries expire, there is room again.
    let mut host = worker(&root.shared, "id", &github_signature(&body(16)));
    host.now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 61);
    assert_eq!(deliver(&policy, &mut host, &body(16)), Verdict::Continue);
}

#[test]
fn shadow_mode_counts_but_forwards() {
    let (policy, root) = setup(json!({}), true);
    let mut host = worker(&root.shared, "d-7", "sha256=00");
    assert_eq!(deliver(&policy, &mut host, BODY), Verdict::Continue);
    assert!(host.sent.is_none());
    assert_eq!(host.counter("meshward_webhook_shadow_denied_total.route.gh.reason.bad_signature"), 1);
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

// --- the fleet-wide seen-set, through the fake host's gRPC calls -----------------------------

use meshward_core::fleet::{ClaimRequest, ClaimResponse, ClaimState, SettleRequest, SettleResponse};
use meshward_core::GrpcResponse;
use prost::Message;

fn fleet_setup(failure_mode: &str) -> (Rc<WebhookPolicy>, FakeHost) {
    let config = json!({"endpoints": [{"name": "gh", "match": {"path": "/hooks/github"}, "scheme": "github",
        "secrets": [{"inline_string": GITHUB_SECRET}], "in_flight_seconds": 20}],
        "fleet": {"cluster": "fleet", "namespace": "payments", "failure_mode": failure_mode}})
    .to_string();
    let mut root = FakeHost::default();
    let policy = Rc::new(WebhookPolicy::configure(config.as_bytes(), &root).unwrap());
    WebhookPolicy::start(&policy, &mut root);
    (policy, root)
}

fn claim_answer(state: ClaimState, remaining_ms: u64, token: &str) -> GrpcResponse {
    GrpcResponse { status: 0, message: ClaimResponse { state: state as i32, remaining_ms, token: token.into(), ..Default::default() }.encode_to_vec() }
}

/// A delivery whose body is in: the claim it sent to the engine, and the filter waiting for it.
fn claimed(policy: &Rc<WebhookPolicy>, shared: &SharedStore) -> (Filter, FakeHost, u32) {
    let mut host = worker(shared, "d-1", GITHUB_SIG);
    let mut filter = Filter::new(policy);
    filter.on_request_headers(&mut host, false);
    host.request_body = BODY.to_vec();
    assert_eq!(filter.on_request_body(&mut host, BODY.len(), true), Verdict::Pause, "waits for the engine");
    let (token, cluster, method, message) = host.grpc_calls.last().cloned().unwrap();
    assert_eq!((cluster.as_str(), method.as_str()), ("fleet", "meshward.fleet.v1.SeenSet/Claim"));
    let claim = ClaimRequest::decode(message.as_slice()).unwrap();
    assert!(claim.key.starts_with("payments/gh/") && claim.key.len() == "payments/gh/".len() + 64, "{}", claim.key);
    assert_eq!(claim.hold_ms, 20_000);
    (filter, host, token)
}

#[test]
fn fleet_claim_then_settle_on_the_answer() {
    let (policy, root) = fleet_setup("deny");
    let (mut filter, mut host, token) = claimed(&policy, &root.shared);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Claimed, 20_000, "t-1"));
    assert_eq!(host.resumed, 1, "the request goes on once the engine granted the claim");
    // The answer waits until the engine recorded the delivery as seen.
    host.response_headers = vec![(":status".into(), "200".into())];
    assert_eq!(filter.on_response_headers(&mut host, true), Verdict::Pause);
    let (settle_token, _, method, message) = host.grpc_calls.last().cloned().unwrap();
    assert_eq!(method, "meshward.fleet.v1.SeenSet/Settle");
    let settle = SettleRequest::decode(message.as_slice()).unwrap();
    assert!(settle.accepted && settle.token == "t-1" && settle.keep_ms >= 86_399_000, "{settle:?}");
    let settled = GrpcResponse { status: 0, message: SettleResponse { settled: true }.encode_to_vec() };
    filter.on_grpc_response(&mut host, settle_token, settled);
    assert_eq!(host.responses_resumed, 1);
    filter.on_done(&mut host);
    assert_eq!(host.grpc_calls.len(), 2, "nothing left to release");
    assert_eq!(host.counter("meshward_webhook_settle_failures_total"), 0);
}

#[test]
fn fleet_answers_in_flight_seen_and_failure() {
    // Another replica handles it right now: 409, and this sidecar's claim is released.
    let (policy, root) = fleet_setup("deny");
    let (mut filter, mut host, token) = claimed(&policy, &root.shared);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::InFlight, 4_500, ""));
    let sent = host.sent.as_ref().unwrap();
    assert_eq!((sent.status, sent.header("retry-after")), (409, Some("5")));
    let (_, again, _) = claimed(&policy, &root.shared);
    assert!(again.sent.is_none(), "released locally: the retry asks the engine again");

    // Another replica accepted it: replayed, and remembered here without asking the engine.
    let (policy, root) = fleet_setup("deny");
    let (mut filter, mut host, token) = claimed(&policy, &root.shared);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Seen, 1_000, ""));
    assert_eq!(reason(&host), "replayed");
    let mut next = worker(&root.shared, "d-1", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut next, BODY), Verdict::Pause);
    assert_eq!((reason(&next), next.grpc_calls.len()), ("replayed".to_string(), 0));

    // The engine is down: 503 + Retry-After by default, counted; `allow` lets it through.
    for (mode, refused) in [("deny", true), ("allow", false)] {
        let (policy, root) = fleet_setup(mode);
        let (mut filter, mut host, token) = claimed(&policy, &root.shared);
        filter.on_grpc_response(&mut host, token, GrpcResponse { status: 14, message: vec![] });
        assert_eq!(host.counter("meshward_webhook_replay_service_failures_total"), 1);
        if refused {
            let sent = host.sent.as_ref().unwrap();
            assert_eq!((sent.status, sent.header("retry-after")), (503, Some("5")));
            assert_eq!(reason(&host), "replay_service_unavailable");
        } else {
            assert!(host.sent.is_none() && host.resumed == 1);
        }
        // A malformed answer is no yes either.
        let (mut filter, mut host, token) = claimed(&policy, &FakeHost::default().shared);
        filter.on_grpc_response(&mut host, token, GrpcResponse { status: 0, message: vec![0xff, 0xff] });
        assert_eq!(host.sent.is_some(), refused);
    }
}

#[test]
fn fleet_claim_released_when_the_upstream_fails_or_never_answers() {
    let (policy, root) = fleet_setup("deny");
    let (mut filter, mut host, token) = claimed(&policy, &root.shared);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Claimed, 20_000, "t-2"));
    host.response_headers = vec![(":status".into(), "502".into())];
    assert_eq!(filter.on_response_headers(&mut host, true), Verdict::Pause);
    let settle = SettleRequest::decode(host.grpc_calls.last().unwrap().3.as_slice()).unwrap();
    assert!(!settle.accepted && settle.token == "t-2");
    // The engine says another claim holds the key: an error, counted; the answer still goes on.
    let (settle_token, ..) = host.grpc_calls.last().cloned().unwrap();
    filter.on_grpc_response(&mut host, settle_token, GrpcResponse { status: 0, message: SettleResponse { settled: false }.encode_to_vec() });
    assert_eq!((host.responses_resumed, host.counter("meshward_fleet_settle_conflicts_total")), (1, 1));

    // The client went away before the answer: the claim is released here at once, and in the
    // engine from the tick (whose answer the root reads), again until it is.
    let (policy, mut root_host) = fleet_setup("deny");
    let (mut filter, mut host, token) = claimed(&policy, &root_host.shared);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Claimed, 20_000, "t-3"));
    filter.on_done(&mut host);
    let (_, retry, _) = claimed(&policy, &root_host.shared);
    assert!(retry.sent.is_none(), "released here");
    root_host.now = host.now;
    WebhookPolicy::on_tick(&policy, &mut root_host);
    let (call, _, _, message) = root_host.grpc_calls.last().cloned().unwrap();
    let release = SettleRequest::decode(message.as_slice()).unwrap();
    assert!(!release.accepted && release.token == "t-3");
    WebhookPolicy::on_grpc_call_response(&policy, &mut root_host, call, &GrpcResponse { status: 0, message: SettleResponse { settled: true }.encode_to_vec() });
    root_host.now += Duration::from_secs(60);
    let calls = root_host.grpc_calls.len();
    WebhookPolicy::on_tick(&policy, &mut root_host);
    assert_eq!(root_host.grpc_calls.len(), calls, "released: nothing left to send");
}

#[test]
fn an_accepted_delivery_the_engine_did_not_record_stays_refused_and_is_sent_again() {
    let (policy, mut root) = fleet_setup("deny");
    let (mut filter, mut host, token) = claimed(&policy, &root.shared);
    let claim = ClaimRequest::decode(host.grpc_calls.last().unwrap().3.as_slice()).unwrap();
    assert!(claim.window_ms > claim.hold_ms, "held for the replay window until settled: {claim:?}");
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Claimed, 20_000, "t-4"));
    host.response_headers = vec![(":status".into(), "200".into())];
    assert_eq!(filter.on_response_headers(&mut host, true), Verdict::Pause);
    let (settle_token, ..) = host.grpc_calls.last().cloned().unwrap();
    filter.on_grpc_response(&mut host, settle_token, GrpcResponse { status: 14, message: vec![] });
    assert_eq!((host.responses_resumed, host.counter("meshward_webhook_settle_failures_total")), (1, 1));
    assert!(host.logs().iter().any(|(_, line)| line.contains("sent again until it does")));
    // A copy here is a replay (this sidecar remembers it), without asking the engine.
    let mut copy = worker(&root.shared, "d-1", GITHUB_SIG);
    assert_eq!(deliver(&policy, &mut copy, BODY), Verdict::Pause);
    assert_eq!((reason(&copy), copy.grpc_calls.len()), ("replayed".to_string(), 0));
    // The tick sends the outcome again: seen, with what is left of the window.
    root.now = host.now + Duration::from_secs(1);
    WebhookPolicy::on_tick(&policy, &mut root);
    let keep = SettleRequest::decode(root.grpc_calls.last().unwrap().3.as_slice()).unwrap();
    assert!(keep.accepted && keep.token == "t-4" && keep.keep_ms > 0, "{keep:?}");
}

#[test]
fn an_answer_that_comes_before_the_body_was_checked_does_not_leave() {
    // A service answering as soon as the headers reach it (they go on where the proxy cannot
    // hold them while the body is read): its answer to an unchecked delivery is replaced; its
    // own refusals pass.
    // (status, who answered) → replaced? Envoy's own answers (a redirect route) ran nothing.
    let cases = [("200", "via_upstream", true), ("302", "via_upstream", true), ("401", "via_upstream", false), ("503", "via_upstream", false), ("301", "direct_response", false)];
    for (status, details, replaced) in cases {
        let (policy, root) = setup(json!({}), false);
        let mut host = worker(&root.shared, &format!("early-{status}"), GITHUB_SIG);
        host.properties.insert(vec!["response".into(), "code_details".into()], details.as_bytes().to_vec());
        let mut filter = Filter::new(&policy);
        assert_eq!(filter.on_request_headers(&mut host, false), Verdict::Continue);
        host.response_headers = vec![(":status".into(), status.into())];
        let verdict = filter.on_response_headers(&mut host, true);
        if replaced {
            assert_eq!((verdict, reason(&host).as_str()), (Verdict::Pause, "answered_before_checked"), "{status}");
            assert_eq!(host.sent.as_ref().unwrap().status, 502);
        } else {
            assert_eq!((verdict, host.sent.is_none()), (Verdict::Continue, true), "{status}");
        }
    }
}

/// A body that stops arriving, or trickles past the bound, is answered 408 `body_timeout`
/// instead of holding the request (and its connection) until Envoy's idle timeout.
#[test]
fn a_slow_body_is_answered_not_held() {
    let bound = Duration::from_secs(5);
    let (policy, _root) = setup(json!({}), false);
    let shared = SharedStore::default();
    // Trickling: the next piece after the bound is refused, the request is not forwarded.
    let mut host = worker(&shared, "d-trickle", GITHUB_SIG);
    let mut filter = Filter::new(&policy).in_context(11, bound);
    filter.on_request_headers(&mut host, false);
    host.request_body = BODY[..3].to_vec();
    assert_eq!(filter.on_request_body(&mut host, 3, false), Verdict::Pause);
    host.now += Duration::from_secs(6);
    host.request_body = BODY[..6].to_vec();
    assert_eq!(filter.on_request_body(&mut host, 6, false), Verdict::Pause);
    assert_eq!((host.sent.as_ref().map(|s| s.status), reason(&host)), (Some(408), "body_timeout".to_string()));
    assert_eq!(host.counter("meshward_webhook_denied_total.route.gh.reason.body_timeout"), 1);
    filter.on_done(&mut host);
    assert_eq!(host.counter("meshward_webhook_denied_total.route.gh.reason.body_timeout"), 1, "charged once");

    // Silent: the VM's tick finds it past its deadline (and answers it in its context); the
    // request's own filter charges the stage when the stream ends.
    let mut host = worker(&shared, "d-silent", GITHUB_SIG);
    let mut filter = Filter::new(&policy).in_context(12, bound);
    filter.on_request_headers(&mut host, false);
    assert!(meshward_runtime::body_wait::expired(host.now + Duration::from_secs(4)).is_empty());
    let late = meshward_runtime::body_wait::expired(host.now + bound);
    assert_eq!(late.iter().map(|w| w.context).collect::<Vec<_>>(), [12]);
    filter.on_done(&mut host);
    assert_eq!(host.counter("meshward_webhook_denied_total.route.gh.reason.body_timeout"), 1);

    // A body that arrives whole in time is not bounded after.
    let body = b"x";
    let mut host = worker(&shared, "d-fast", &github_signature(body));
    let mut filter = Filter::new(&policy).in_context(13, bound);
    filter.on_request_headers(&mut host, false);
    host.request_body = body.to_vec();
    assert_eq!(filter.on_request_body(&mut host, 1, true), Verdict::Continue);
    assert!(meshward_runtime::body_wait::expired(host.now + Duration::from_secs(60)).is_empty());
}
