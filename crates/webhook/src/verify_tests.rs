//! The published vectors (shared/vectors/webhooks.md) and one row per deny reason.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::config::WebhookConfig;

fn endpoint(scheme: &str, secrets: &[&str], extra: Value) -> Endpoint {
    let mut e = json!({"name": "e", "match": {"prefix": "/"}, "scheme": scheme,
        "secrets": secrets.iter().map(|s| json!({"inline_string": s})).collect::<Vec<_>>()});
    if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
        e.extend(extra.clone());
    }
    let cfg = json!({"endpoints": [e]}).to_string();
    WebhookConfig::parse(cfg.as_bytes(), &|_| None).unwrap().endpoints.remove(0)
}

fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name: &str| map.get(name).cloned()
}

fn check(e: &Endpoint, pairs: &[(&str, &str)], body: &[u8], now: u64) -> Result<Delivery, WebhookError> {
    let delivery = check_headers(e, &headers(pairs), now)?;
    verify_signature(e, &delivery, body)?;
    Ok(delivery)
}

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: &str = "1614265330";
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const SW_BAD: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
const SW_PK: &str = "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=";
const SW_V1A: &str = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

fn sw(sig: &str) -> Vec<(&'static str, String)> {
    vec![("webhook-id", SW_ID.into()), ("webhook-timestamp", SW_TS.into()), ("webhook-signature", sig.into())]
}

fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn standard_webhooks_published_vectors() {
    let e = endpoint("standard_webhooks", &[SW_SECRET], json!({}));
    let now = 1614265330;
    let d = check(&e, &as_refs(&sw(SW_SIG)), SW_BODY, now).unwrap();
    assert_eq!(d.signed_id.as_deref(), Some(SW_ID));
    assert_eq!(check(&e, &as_refs(&sw(SW_BAD)), SW_BODY, now), Err(WebhookError::BadSignature));
    // Several signatures, unknown versions skipped: any valid one passes.
    let several = format!("v2,abc {SW_BAD} {SW_SIG}");
    assert!(check(&e, &as_refs(&sw(&several)), SW_BODY, now).is_ok());
    // svix-* aliases.
    let svix = [("svix-id", SW_ID), ("svix-timestamp", SW_TS), ("svix-signature", SW_SIG)];
    assert!(check(&e, &svix, SW_BODY, now).is_ok());
    // Asymmetric v1a with the whpk_ public key.
    let ed = endpoint("standard_webhooks", &[SW_PK], json!({}));
    assert!(check(&ed, &as_refs(&sw(SW_V1A)), SW_BODY, now).is_ok());
    assert_eq!(check(&ed, &as_refs(&sw(SW_SIG)), SW_BODY, now), Err(WebhookError::BadSignature));
    assert_eq!(check(&ed, &as_refs(&sw(SW_V1A)), br#"{"test": 2432232315}"#, now), Err(WebhookError::BadSignature));
}

#[test]
fn stripe_published_vector() {
    let e = endpoint("stripe", &["whsec_test_secret"], json!({}));
    let header = "t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";
    let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
    let d = check(&e, &[("stripe-signature", header)], body, 1_700_000_100).unwrap();
    assert_eq!(d.signed_id, None, "Stripe signs no id header: the signed content is the key");
    // Extra v0 and a second (wrong) v1 do not matter.
    let multi = format!("t=1700000000,v0=abc,v1={},{}", "00".repeat(32), &header[13..]);
    assert!(check(&e, &[("stripe-signature", &multi)], body, 1_700_000_000).is_ok());
    assert_eq!(check(&e, &[("stripe-signature", header)], b"{}", 1_700_000_000), Err(WebhookError::BadSignature));
}

#[test]
fn github_published_vector() {
    let e = endpoint("github", &["It's a Secret to Everybody"], json!({}));
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let h = [("x-hub-signature-256", sig), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")];
    assert!(check(&e, &h, b"Hello, World!", 0).is_ok());
    assert_eq!(check(&e, &h, b"Hello, World?", 0), Err(WebhookError::BadSignature));
    // X-GitHub-Delivery is not signed, so it is neither needed nor trusted.
    assert_eq!(check(&e, &h[..1], b"Hello, World!", 0).map(|d| d.signed_id), Ok(None));
}

#[test]
fn rotation_any_configured_secret_verifies() {
    let e = endpoint("stripe", &["whsec_new_secret_2026", "whsec_test_secret"], json!({}));
    let header = "t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";
    let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
    assert!(check(&e, &[("stripe-signature", header)], body, 1_700_000_000).is_ok());
}

#[test]
fn deny_reasons() {
    let sw_e = endpoint("standard_webhooks", &[SW_SECRET], json!({}));
    let now: u64 = 1614265330;
    let stale = [("webhook-id", SW_ID), ("webhook-timestamp", SW_TS), ("webhook-signature", SW_SIG)];
    let stripe = endpoint("stripe", &["whsec_test_secret"], json!({}));
    type Case<'a> = (&'a str, &'a Endpoint, Vec<(&'a str, &'a str)>, u64, WebhookError);
    let cases: Vec<Case> = vec![
        ("no headers", &sw_e, vec![], now, WebhookError::MissingSignature),
        ("no id", &sw_e, vec![("webhook-timestamp", SW_TS), ("webhook-signature", SW_SIG)], now, WebhookError::MissingSignature),
        ("301 s late", &sw_e, stale.to_vec(), now + 301, WebhookError::TimestampOutOfWindow),
        ("301 s early", &sw_e, stale.to_vec(), now - 301, WebhookError::TimestampOutOfWindow),
        ("timestamp not a number", &sw_e, vec![("webhook-id", SW_ID), ("webhook-timestamp", "soon"), ("webhook-signature", SW_SIG)], now, WebhookError::TimestampOutOfWindow),
        ("huge timestamp", &sw_e, vec![("webhook-id", SW_ID), ("webhook-timestamp", "9223372036854775807"), ("webhook-signature", SW_SIG)], now, WebhookError::TimestampOutOfWindow),
        ("only unknown versions", &sw_e, vec![("webhook-id", SW_ID), ("webhook-timestamp", SW_TS), ("webhook-signature", "v9,AAAA")], now, WebhookError::BadSignature),
        ("signature not base64", &sw_e, vec![("webhook-id", SW_ID), ("webhook-timestamp", SW_TS), ("webhook-signature", "v1,!!!")], now, WebhookError::BadSignature),
        ("id changed", &sw_e, vec![("webhook-id", "msg_other"), ("webhook-timestamp", SW_TS), ("webhook-signature", SW_SIG)], now, WebhookError::BadSignature),
        ("stripe header missing", &stripe, vec![], 1_700_000_000, WebhookError::MissingSignature),
        ("stripe without t", &stripe, vec![("stripe-signature", "v1=00")], 1_700_000_000, WebhookError::BadSignature),
        ("stripe without v1", &stripe, vec![("stripe-signature", "t=1700000000")], 1_700_000_000, WebhookError::BadSignature),
        ("stripe stale", &stripe, vec![("stripe-signature", "t=1700000000,v1=00")], 1_700_000_301, WebhookError::TimestampOutOfWindow),
    ];
    for (name, e, h, now, want) in cases {
        assert_eq!(check(e, &h, SW_BODY, now).err(), Some(want), "{name}");
    }
}

#[test]
fn generic_hmac_scheme() {
    let e = endpoint("hmac", &["0123456789abcdef0123456789abcdef"], json!({"hmac": {
        "signature_header": "X-Signature", "algorithm": "sha512", "encoding": "base64", "value_prefix": "sha512=",
        "timestamp_header": "x-timestamp", "id_header": "x-delivery", "signed_content": "{id}:{timestamp}:{body}:end"}}));
    let body = b"payload";
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    mac.update(b"d-1:1000:payload:end");
    let sig = format!("sha512={}", <ct_codecs::Base64 as ct_codecs::Encoder>::encode_to_string(mac.finalize().into_bytes()).unwrap());
    let h = [("x-signature", sig.as_str()), ("x-timestamp", "1000"), ("x-delivery", "d-1")];
    let d = check(&e, &h, body, 1000).unwrap();
    assert_eq!(d.signed_id.as_deref(), Some("d-1"));
    assert_eq!(check(&e, &h, b"payloaX", 1000), Err(WebhookError::BadSignature));
    assert_eq!(check(&e, &h[..2], body, 1000), Err(WebhookError::MissingDeliveryId));
    assert_eq!(check(&e, &[h[0], ("x-timestamp", "1000"), ("x-delivery", "d-2")], body, 1000), Err(WebhookError::BadSignature));
    let unprefixed = sig.trim_start_matches("sha512=");
    assert_eq!(check(&e, &[("x-signature", unprefixed), h[1], h[2]], body, 1000), Err(WebhookError::BadSignature));
}

/// The replay key of the deliveries a sender (or an attacker replaying one) can produce.
#[test]
fn replay_keys_come_from_signed_material_only() {
    let key = |e: &Endpoint, h: &[(&str, &str)], body: &[u8], now: u64| check(e, h, body, now).map(|d| replay_key(&d, body)).unwrap();
    // Stripe: reordered signatures, a bogus extra one, another hex case: the same delivery.
    let stripe = endpoint("stripe", &["whsec_test_secret"], json!({}));
    let sig = "d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";
    let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
    let plain = format!("t=1700000000,v1={sig}");
    let original = key(&stripe, &[("stripe-signature", &plain)], body, 1_700_000_000);
    assert_eq!(original.len(), 64);
    for variant in [
        format!("t=1700000000,v1={},v1={sig}", "00".repeat(32)),
        format!("v1={sig},t=1700000000,v0=ff"),
        format!("t=1700000000,v1={}", sig.to_ascii_uppercase()),
    ] {
        assert_eq!(key(&stripe, &[("stripe-signature", &variant)], body, 1_700_000_000), original, "{variant}");
    }
    // GitHub: a fresh, unsigned delivery id does not make a replay new.
    let github = endpoint("github", &["It's a Secret to Everybody"], json!({}));
    let gh = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let first = key(&github, &[("x-hub-signature-256", gh), ("x-github-delivery", "one")], b"Hello, World!", 0);
    assert_eq!(key(&github, &[("x-hub-signature-256", gh), ("x-github-delivery", "two")], b"Hello, World!", 0), first);
    // Standard Webhooks: the signed id is the key, whichever signature verified.
    let sw_e = endpoint("standard_webhooks", &[SW_SECRET], json!({}));
    let now = 1614265330;
    let sw_key = key(&sw_e, &as_refs(&sw(SW_SIG)), SW_BODY, now);
    assert_eq!(key(&sw_e, &as_refs(&sw(&format!("{SW_BAD} {SW_SIG}"))), SW_BODY, now), sw_key);
    assert_ne!(sw_key, original);
    // Generic HMAC with an id header the signature does not cover: the id is ignored.
    let unsigned_id = endpoint("hmac", &["0123456789abcdef0123456789abcdef"], json!({"hmac": {
        "signature_header": "x-signature", "encoding": "hex", "id_header": "x-delivery"}}));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    mac.update(b"payload");
    let hex = <ct_codecs::Hex as ct_codecs::Encoder>::encode_to_string(mac.finalize().into_bytes()).unwrap();
    let a = key(&unsigned_id, &[("x-signature", &hex), ("x-delivery", "a")], b"payload", 0);
    assert_eq!(key(&unsigned_id, &[("x-signature", &hex), ("x-delivery", "b")], b"payload", 0), a);
}

#[test]
fn bad_configurations_are_refused() {
    let parse = |v: Value| WebhookConfig::parse(v.to_string().as_bytes(), &|_| None).err().map(|e| e.to_string());
    let base = |extra: Value| {
        let mut e = json!({"name": "e", "match": {"prefix": "/"}, "scheme": "stripe", "secrets": [{"inline_string": "whsec_test_secret"}]});
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"endpoints": [e]})
    };
    let cases = [
        (json!({"endpoints": []}), "endpoints: at least one endpoint"),
        (base(json!({"secrets": []})), "endpoints[0].secrets: at least one secret"),
        (base(json!({"secret": []})), "unknown field `secret`"),
        (base(json!({"scheme": "paypal"})), "unknown variant `paypal`"),
        (base(json!({"secrets": [{"inline_string": "short"}]})), "at least 16 bytes"),
        (base(json!({"scheme": "standard_webhooks", "secrets": [{"inline_string": "plain-secret-plain-secret"}]})), "start with whsec_"),
        (base(json!({"scheme": "standard_webhooks"})), "whsec_ secret is not base64"),
        (base(json!({"scheme": "standard_webhooks", "secrets": [{"inline_string": "whpk_AAAA"}]})), "32 bytes"),
        (base(json!({"scheme": "hmac"})), "endpoints[0].hmac: is required"),
        (base(json!({"hmac": {"signature_header": "x", "encoding": "hex"}})), "only for scheme"),
        (base(json!({"scheme": "hmac", "hmac": {"signature_header": "x", "encoding": "hex", "signed_content": "{timestamp}.{body}"}})), "without the matching header"),
        (base(json!({"scheme": "hmac", "hmac": {"signature_header": "x", "encoding": "hex", "signed_content": "{body}{body}"}})), "exactly once"),
        (base(json!({"tolerance_seconds": 0})), "tolerance_seconds"),
        (base(json!({"max_body_bytes": 0})), "max_body_bytes"),
        (base(json!({"match": {"prefix": "x"}})), "must start with '/'"),
        (base(json!({"secrets": [{"environment_variable": "NOPE"}]})), "\"NOPE\" is not set"),
        (json!({"endpoints": [base(json!({}))["endpoints"][0], base(json!({}))["endpoints"][0]]}), "used twice"),
        (base(json!({"accepted_statuses": []})), "endpoints[0].accepted_statuses: name at least one"),
        (base(json!({"accepted_statuses": ["200-299", "2xx"]})), "endpoints[0].accepted_statuses[1]: \"2xx\" is not a status"),
        (base(json!({"accepted_statuses": ["299-200"]})), "accepted_statuses[0]"),
        (base(json!({"accepted_statuses": ["600"]})), "accepted_statuses[0]"),
        (base(json!({"in_flight_seconds": 0})), "endpoints[0].in_flight_seconds"),
        (json!({"endpoints": base(json!({}))["endpoints"], "fleet": {"cluster": "", "namespace": "pay"}}), "fleet.cluster"),
        (json!({"endpoints": base(json!({}))["endpoints"], "fleet": {"cluster": "f", "namespace": "a/b"}}), "fleet.namespace"),
        (json!({"endpoints": base(json!({}))["endpoints"], "fleet": {"cluster": "f", "namespace": "p", "timeout": "0s"}}), "fleet.timeout"),
        (json!({"endpoints": base(json!({}))["endpoints"], "fleet": {"cluster": "f", "namespace": "p", "failure_mode": "maybe"}}), "unknown variant `maybe`"),
        (json!({"endpoints": base(json!({}))["endpoints"], "fleet": {"cluster": "f"}}), "missing field `namespace`"),
    ];
    for (cfg, want) in cases {
        let err = parse(cfg.clone()).unwrap_or_else(|| panic!("accepted: {cfg}"));
        assert!(err.contains(want), "{cfg}: {err}");
    }
}
