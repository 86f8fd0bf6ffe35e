//! The idempotency filter driven through the fake host and its gRPC calls: one row per way a
//! request on an idempotent operation can go.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::rc::Rc;

use meshward_core::fleet::{ClaimRequest, ClaimResponse, ClaimState, SettleOutcome, SettleRequest, SettleResponse};
use meshward_core::principal::encode;
use meshward_core::{GrpcResponse, Policy, Principal, PRINCIPAL_PROPERTY};
use meshward_host::{FakeHost, LogLevel};
use meshward_idempotency::IdempotencyPolicy;
use meshward_runtime::{Filter, Verdict};
use prost::Message;
use serde_json::{json, Value};

const BODY: &[u8] = b"{\"product_id\":1,\"quantity\":2}";

fn policy(extra: Value) -> Rc<IdempotencyPolicy> {
    let mut config = json!({"operations": [{"name": "create-order", "match": {"path": "/orders", "methods": ["POST"]}}],
        "fleet": {"cluster": "fleet", "namespace": "shop"}, "in_flight_seconds": 30, "expiry": "3600s", "max_answer_bytes": 64});
    config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    Rc::new(IdempotencyPolicy::configure(config.to_string().as_bytes(), &FakeHost::default()).unwrap())
}

fn request_host(subject: Option<&str>, headers: &[(&str, &str)]) -> FakeHost {
    let mut all = vec![(":method", "POST"), (":path", "/orders"), ("content-type", "application/json")];
    all.extend_from_slice(headers);
    let mut host = FakeHost::with_request(&all);
    if let Some(subject) = subject {
        let principal = Principal {
            provider: "idp".into(),
            issuer: "https://idp".into(),
            subject: Some(subject.into()),
            audiences: vec![],
            scopes: vec![],
            tenant: None,
            claims: Default::default(),
        };
        host.properties.insert(vec![PRINCIPAL_PROPERTY.to_string()], encode(&principal).unwrap().to_vec());
    }
    host
}

fn reason(host: &FakeHost) -> String {
    let body: Value = serde_json::from_slice(&host.sent.as_ref().unwrap().body).unwrap();
    body["reason"].as_str().unwrap().to_string()
}

/// A request whose body is in: the claim it sent, and the filter waiting for the engine.
fn claimed(policy: &Rc<IdempotencyPolicy>, key: &str, body: &[u8]) -> (Filter, FakeHost, u32, ClaimRequest) {
    let mut host = request_host(Some("alice"), &[("idempotency-key", key)]);
    let mut filter = Filter::new(policy);
    assert_eq!(filter.on_request_headers(&mut host, false), Verdict::Continue);
    host.request_body = body.to_vec();
    assert_eq!(filter.on_request_body(&mut host, body.len(), true), Verdict::Pause, "waits for the engine");
    let (token, cluster, method, message) = host.grpc_calls.last().cloned().unwrap();
    assert_eq!((cluster.as_str(), method.as_str()), ("fleet", "meshward.fleet.v1.SeenSet/Claim"));
    (filter, host, token, ClaimRequest::decode(message.as_slice()).unwrap())
}

fn claim_answer(state: ClaimState, fingerprint: &str, record: Vec<u8>) -> GrpcResponse {
    let answer = ClaimResponse { state: state as i32, remaining_ms: 2_500, token: "t-1".into(), fingerprint: fingerprint.into(), record };
    GrpcResponse { status: 0, message: answer.encode_to_vec() }
}

fn settled(ok: bool) -> GrpcResponse {
    GrpcResponse { status: 0, message: SettleResponse { settled: ok }.encode_to_vec() }
}

/// The claim granted and the upstream's answer in; returns the settle the filter sent.
fn answered(status: &str, details: &str, body: &[u8]) -> (Filter, FakeHost, Verdict, Option<SettleRequest>) {
    let policy = policy(json!({}));
    let (mut filter, mut host, token, claim) = claimed(&policy, "k-1", BODY);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Claimed, &claim.fingerprint, vec![]));
    assert_eq!(host.resumed, 1);
    host.response_headers = vec![
        (":status".into(), status.into()),
        ("content-type".into(), "application/json".into()),
        ("location".into(), "/orders/7".into()),
        ("set-cookie".into(), "s=1".into()),
        ("x-other".into(), "1".into()),
    ];
    host.properties.insert(vec!["response".into(), "code_details".into()], details.as_bytes().to_vec());
    let calls = host.grpc_calls.len();
    let mut verdict = filter.on_response_headers(&mut host, false);
    if verdict == Verdict::Continue {
        host.response_body = body.to_vec();
        verdict = filter.on_response_body(&mut host, body.len(), true);
    }
    let settle = host.grpc_calls.get(calls).map(|c| SettleRequest::decode(c.3.as_slice()).unwrap());
    (filter, host, verdict, settle)
}

#[test]
fn requests_refused_before_the_engine_is_asked() {
    let policy = policy(json!({}));
    // (caller, headers) → status, reason.
    type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case; 5] = [
        (Some("alice"), &[], 400, "idempotency_key_missing"),
        (Some("alice"), &[("idempotency-key", "")], 400, "idempotency_key_invalid"),
        (Some("alice"), &[("idempotency-key", "a"), ("idempotency-key", "b")], 400, "idempotency_key_invalid"),
        (Some("alice"), &[("idempotency-key", "not visible")], 400, "idempotency_key_invalid"),
        (None, &[("idempotency-key", "k-1")], 401, "principal_required"),
    ];
    for (subject, headers, status, why) in cases {
        let mut host = request_host(subject, headers);
        let mut filter = Filter::new(&policy);
        assert_eq!(filter.on_request_headers(&mut host, false), Verdict::Pause, "{headers:?}");
        assert_eq!((host.sent.as_ref().unwrap().status, reason(&host).as_str()), (status, why), "{headers:?}");
        assert!(host.grpc_calls.is_empty());
    }
    // Other operations are not this policy's business.
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/orders")]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut host, true), Verdict::Continue);
}

#[test]
fn the_claim_names_caller_operation_key_and_request() {
    let policy = policy(json!({}));
    let (_, _, _, claim) = claimed(&policy, "k-1", BODY);
    assert!(claim.key.starts_with("shop/idempotency/create-order/") && claim.key.len() == "shop/idempotency/create-order/".len() + 64, "{}", claim.key);
    assert_eq!((claim.hold_ms, claim.fingerprint.len()), (30_000, 64));
    // The same key in its structured-field form is the same key; another body is another request.
    let (_, _, _, quoted) = claimed(&policy, "\"k-1\"", BODY);
    assert_eq!((quoted.key.as_str(), quoted.fingerprint.as_str()), (claim.key.as_str(), claim.fingerprint.as_str()));
    let (_, _, _, other) = claimed(&policy, "k-1", b"{\"product_id\":1,\"quantity\":200}");
    assert_eq!(other.key, claim.key);
    assert_ne!(other.fingerprint, claim.fingerprint);
    // Another caller with the same key: another entry.
    let mut bob = request_host(Some("bob"), &[("idempotency-key", "k-1")]);
    let mut filter = Filter::new(&policy);
    filter.on_request_headers(&mut bob, false);
    bob.request_body = BODY.to_vec();
    filter.on_request_body(&mut bob, BODY.len(), true);
    assert_ne!(ClaimRequest::decode(bob.grpc_calls[0].3.as_slice()).unwrap().key, claim.key);
}

#[test]
fn what_the_engine_answers_decides() {
    let policy = policy(json!({}));
    let stored = meshward_idempotency::record::encode(201, &[("content-type".into(), "application/json".into())], b"{\"id\":7}");
    // (state, same fingerprint, record) → status, reason or replayed body.
    let cases = [
        (ClaimState::InFlight, true, vec![], 409, "idempotency_key_in_flight"),
        (ClaimState::InFlight, false, vec![], 422, "idempotency_key_reused"),
        (ClaimState::Seen, false, stored.clone(), 422, "idempotency_key_reused"),
        (ClaimState::Seen, true, b"\xff".to_vec(), 503, "stored_answer_unreadable"),
    ];
    for (state, same, record, status, why) in cases {
        let (mut filter, mut host, token, claim) = claimed(&policy, "k-1", BODY);
        let fingerprint = if same { claim.fingerprint.clone() } else { "f".repeat(64) };
        filter.on_grpc_response(&mut host, token, claim_answer(state, &fingerprint, record));
        let sent = host.sent.as_ref().unwrap();
        assert_eq!((sent.status, reason(&host).as_str()), (status, why), "{state:?}");
        if status == 409 {
            assert_eq!(sent.header("retry-after"), Some("3"));
        }
        assert_eq!(host.resumed, 0);
    }
    // Answered before with this request: the stored answer, marked, and the upstream never sees it.
    let (mut filter, mut host, token, claim) = claimed(&policy, "k-1", BODY);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Seen, &claim.fingerprint, stored));
    let sent = host.sent.as_ref().unwrap();
    assert_eq!((sent.status, sent.body.as_slice()), (201, b"{\"id\":7}".as_slice()));
    assert_eq!((sent.header("idempotent-replayed"), sent.header("content-type")), (Some("true"), Some("application/json")));
    assert_eq!((host.resumed, host.counter("meshward_idempotency_replays_total")), (0, 1));
}

#[test]
fn the_engine_down_follows_the_failure_mode() {
    for (mode, refused) in [("deny", true), ("allow", false)] {
        let policy = policy(json!({"fleet": {"cluster": "fleet", "namespace": "shop", "failure_mode": mode}}));
        for answer in [GrpcResponse { status: 14, message: vec![] }, GrpcResponse { status: 0, message: vec![0xff, 0xff] }] {
            let (mut filter, mut host, token, _) = claimed(&policy, "k-1", BODY);
            filter.on_grpc_response(&mut host, token, answer);
            assert_eq!(host.counter("meshward_idempotency_service_failures_total"), 1);
            if refused {
                let sent = host.sent.as_ref().unwrap();
                assert_eq!((sent.status, sent.header("retry-after"), reason(&host).as_str()), (503, Some("5"), "idempotency_service_unavailable"));
            } else {
                assert!(host.sent.is_none() && host.resumed == 1);
            }
        }
    }
}

#[test]
fn answers_are_stored_or_released() {
    // (status, from the upstream, body) → stored?
    let cases: [(&str, &str, &[u8], bool); 5] = [
        ("201", "via_upstream", b"{\"id\":7}", true),
        ("409", "via_upstream", b"{\"error\":\"sold out\"}", true),
        ("500", "via_upstream", b"oops", false),
        ("503", "upstream_reset_before_response_started{connection_termination}", b"", false),
        // A later stage refused: the service never ran it.
        ("403", "wasm_fail_stream", b"{}", false),
    ];
    for (status, details, body, stored) in cases {
        let (_, _, verdict, settle) = answered(status, details, body);
        let settle = settle.unwrap();
        assert_eq!(settle.accepted, stored, "{status} {details}");
        assert_eq!(settle.token, "t-1");
        if stored {
            assert_eq!(verdict, Verdict::Pause, "the answer waits until it is stored");
            assert_eq!(settle.keep_ms, 3_600_000);
            let reply = meshward_idempotency::record::replay(&settle.record).unwrap();
            assert_eq!((reply.status.to_string().as_str(), reply.body.as_slice()), (status, body));
            let names: Vec<&str> = reply.headers.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["content-type", "location", "idempotent-replayed"], "only the stored headers");
        } else {
            assert!(settle.record.is_empty());
        }
    }
    // The engine confirms: counted; the answer goes on.
    let (mut filter, mut host, _, _) = answered("201", "via_upstream", b"{}");
    let (call, ..) = host.grpc_calls.last().cloned().unwrap();
    filter.on_grpc_response(&mut host, call, settled(true));
    assert_eq!((host.responses_resumed, host.counter("meshward_idempotency_stored_total")), (1, 1));
    // Another claim holds the key (the engine lost ours): an error, counted; the answer goes on.
    let (mut filter, mut host, _, _) = answered("500", "via_upstream", b"");
    let (call, ..) = host.grpc_calls.last().cloned().unwrap();
    filter.on_grpc_response(&mut host, call, settled(false));
    assert_eq!((host.responses_resumed, host.counter("meshward_fleet_settle_conflicts_total")), (1, 1));
    assert!(host.logs().iter().any(|(level, line)| *level == LogLevel::Error && line.contains("another claim")));
    // Too large to store: the body is on its way; the release is kept for the tick to send.
    let (_, host, verdict, settle) = answered("201", "via_upstream", &[b'x'; 65]);
    assert_eq!((verdict, settle), (Verdict::Continue, None));
    assert_eq!(host.counter("meshward_idempotency_not_stored_total"), 1);
}

/// The policy's tick and root-level answers, as the runtime drives them.
fn tick(policy: &Rc<IdempotencyPolicy>, host: &mut FakeHost) -> Vec<(u32, SettleRequest)> {
    let before = host.grpc_calls.len();
    IdempotencyPolicy::on_tick(policy, host);
    host.grpc_calls[before..].iter().map(|c| (c.0, SettleRequest::decode(c.3.as_slice()).unwrap())).collect()
}

#[test]
fn an_outcome_the_engine_did_not_record_is_kept_answered_here_and_sent_again() {
    let policy = policy(json!({}));
    let (mut filter, mut host, _, _) = {
        let (mut filter, mut host, token, claim) = claimed(&policy, "k-1", BODY);
        assert_eq!((claim.hold_ms, claim.window_ms), (30_000, 3_600_000), "held for the whole expiry until settled");
        filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Claimed, &claim.fingerprint, vec![]));
        host.response_headers = vec![(":status".into(), "201".into()), ("content-type".into(), "application/json".into())];
        host.properties.insert(vec!["response".into(), "code_details".into()], b"via_upstream".to_vec());
        assert_eq!(filter.on_response_headers(&mut host, false), Verdict::Continue);
        host.response_body = b"{\"id\":7}".to_vec();
        assert_eq!(filter.on_response_body(&mut host, 8, true), Verdict::Pause);
        (filter, host, token, claim)
    };
    // The engine does not answer the settle: the answer goes on, the outcome is kept, once.
    let (call, ..) = host.grpc_calls.last().cloned().unwrap();
    filter.on_grpc_response(&mut host, call, GrpcResponse { status: 14, message: vec![] });
    assert_eq!((host.responses_resumed, host.counter("meshward_idempotency_settle_failures_total")), (1, 1));
    assert_eq!(host.logs().iter().filter(|(level, _)| *level == LogLevel::Warn).count(), 1);
    filter.on_done(&mut host);
    // A copy on this sidecar gets the answer from what it keeps, without asking the engine.
    let mut copy = request_host(Some("alice"), &[("idempotency-key", "k-1")]);
    copy.shared = host.shared.clone();
    let mut again = Filter::new(&policy);
    assert_eq!(again.on_request_headers(&mut copy, false), Verdict::Continue);
    copy.request_body = BODY.to_vec();
    again.on_request_body(&mut copy, BODY.len(), true);
    assert!(copy.grpc_calls.is_empty(), "the engine was not asked");
    let sent = copy.sent.as_ref().unwrap();
    assert_eq!((sent.status, sent.body.as_slice(), sent.header("idempotent-replayed")), (201, b"{\"id\":7}".as_slice(), Some("true")));
    // Another request with the same key: refused as reused.
    let mut other = request_host(Some("alice"), &[("idempotency-key", "k-1")]);
    other.shared = host.shared.clone();
    let mut reused = Filter::new(&policy);
    reused.on_request_headers(&mut other, false);
    other.request_body = b"{}".to_vec();
    reused.on_request_body(&mut other, 2, true);
    assert_eq!(reason(&other), "idempotency_key_reused");
    // The tick sends it again until the engine records it.
    host.now += std::time::Duration::from_secs(1);
    let sent = tick(&policy, &mut host);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].1.token.as_str(), sent[0].1.accepted), ("t-1", true));
    IdempotencyPolicy::on_grpc_call_response(&policy, &mut host, sent[0].0, &GrpcResponse { status: 14, message: vec![] });
    host.now += std::time::Duration::from_secs(2);
    let sent = tick(&policy, &mut host);
    IdempotencyPolicy::on_grpc_call_response(&policy, &mut host, sent[0].0, &settled(true));
    assert_eq!(host.counter("meshward_fleet_settles_recovered_total"), 1);
    host.now += std::time::Duration::from_secs(60);
    assert!(tick(&policy, &mut host).is_empty(), "nothing left to send");
    assert_eq!(host.counter("meshward_idempotency_settle_failures_total"), 1, "counted once");
}

#[test]
fn a_stream_reset_before_any_answer_lets_the_claim_lapse_after_in_flight_seconds() {
    let policy = policy(json!({}));
    let (mut filter, mut host, token, claim) = claimed(&policy, "k-1", BODY);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Claimed, &claim.fingerprint, vec![]));
    filter.on_done(&mut host);
    let sent = tick(&policy, &mut host);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].1.outcome, sent[0].1.accepted), (SettleOutcome::Lapse as i32, false), "lapse: whether it ran is unknown");
}

#[test]
fn shadow_mode_lets_the_retry_through_and_counts_it() {
    let policy = policy(json!({"mode": "shadow"}));
    let stored = meshward_idempotency::record::encode(201, &[], b"{}");
    let (mut filter, mut host, token, claim) = claimed(&policy, "k-1", BODY);
    filter.on_grpc_response(&mut host, token, claim_answer(ClaimState::Seen, &claim.fingerprint, stored));
    assert!(host.sent.is_none() && host.resumed == 1, "went on to the upstream");
    assert_eq!(host.counter("meshward_idempotency_replays_total"), 1);
    let mut missing = request_host(Some("alice"), &[]);
    assert_eq!(Filter::new(&policy).on_request_headers(&mut missing, false), Verdict::Continue);
    assert_eq!(missing.counter("meshward_idempotency_shadow_denied_total.route.create-order.reason.idempotency_key_missing"), 1);
}
