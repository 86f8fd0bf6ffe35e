//! The SotW rules, one conversation per test.

use prost::Message;

use super::*;
use crate::xds::proto::{resource_entry, Any, DiscoveryResponse, Node, Status};

/// Every filter's configuration differs from one version to the next.
fn snapshot(version: &str, names: &[&str]) -> Snapshot {
    let resources = names.iter().map(|n| (n.to_string(), resource(&format!("{n}@{version}")))).collect();
    Snapshot { version: version.into(), resources }
}

fn resource(content: &str) -> Bytes {
    resource_entry(&Any { type_url: TYPED_EXTENSION_CONFIG.into(), value: content.as_bytes().to_vec() })
}

/// What a resource entry carries.
fn content(entry: &Bytes) -> String {
    let read = DiscoveryResponse::decode(entry.as_ref()).expect("a resource entry");
    String::from_utf8_lossy(&read.resources[0].value).into_owned()
}

fn request(names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: String::new(),
        node: Some(Node { id: "crapi-1".into(), cluster: "crapi".into() }),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: TYPED_EXTENSION_CONFIG.into(),
        response_nonce: nonce.into(),
        error_detail: None,
    }
}

fn nack(names: &[&str], nonce: &str, message: &str) -> DiscoveryRequest {
    DiscoveryRequest { error_detail: Some(Status { code: 3, message: message.into() }), ..request(names, nonce) }
}

fn sent(step: &Step) -> (&str, &str, Vec<String>) {
    let r = step.response.as_ref().expect("a response");
    (r.version_info.as_str(), r.nonce.as_str(), r.resources.iter().map(content).collect())
}

#[test]
fn the_first_request_gets_the_requested_filters_only() {
    let mut s = Session::default();
    let v1 = snapshot("v1", &["meshward.jwt", "meshward.ratelimit"]);
    let step = s.on_request(request(&["meshward.jwt"], ""), Some(&v1)).unwrap();
    assert_eq!(sent(&step), ("v1", "1", vec!["meshward.jwt@v1".to_string()]));
    assert_eq!(step.events, vec![]);
    assert_eq!(s.node(), "crapi-1");
}

#[test]
fn no_names_means_every_filter() {
    let mut s = Session::default();
    let step = s.on_request(request(&[], ""), Some(&snapshot("v1", &["meshward.jwt", "meshward.schema"]))).unwrap();
    assert_eq!(sent(&step).2.len(), 2);
}

#[test]
fn an_ack_is_reported_and_answered_with_nothing() {
    let mut s = Session::default();
    let v1 = snapshot("v1", &["meshward.jwt"]);
    s.on_request(request(&["meshward.jwt"], ""), Some(&v1)).unwrap();
    let step = s.on_request(request(&["meshward.jwt"], "1"), Some(&v1)).unwrap();
    assert_eq!(step.response, None);
    assert_eq!(step.events, vec![Event::Applied { node: "crapi-1".into(), version: "v1".into(), names: vec!["meshward.jwt".into()] }]);
}

#[test]
fn a_rejected_version_is_reported_and_not_sent_again_but_the_next_one_is() {
    let mut s = Session::default();
    let v1 = snapshot("v1", &["meshward.jwt"]);
    s.on_request(request(&["meshward.jwt"], ""), Some(&v1)).unwrap();
    let step = s.on_request(nack(&["meshward.jwt"], "1", "Unable to create Wasm HTTP filter"), Some(&v1)).unwrap();
    assert_eq!(step.response, None);
    assert_eq!(
        step.events,
        vec![Event::Rejected {
            node: "crapi-1".into(),
            version: "v1".into(),
            names: vec!["meshward.jwt".into()],
            message: "Unable to create Wasm HTTP filter".into()
        }]
    );
    assert_eq!(s.on_snapshot(&v1), None);
    let v2 = snapshot("v2", &["meshward.jwt"]);
    assert_eq!(s.on_snapshot(&v2).map(|r| (r.version_info, r.nonce)), Some(("v2".into(), "2".into())));
}

#[test]
fn a_new_version_goes_to_subscribed_envoys_once() {
    let mut s = Session::default();
    let v2 = snapshot("v2", &["meshward.jwt"]);
    assert_eq!(s.on_snapshot(&v2), None, "nothing before the Envoy asks");
    s.on_request(request(&["meshward.jwt"], ""), Some(&snapshot("v1", &["meshward.jwt"]))).unwrap();
    assert_eq!(s.on_snapshot(&v2).map(|r| r.version_info), Some("v2".into()));
    assert_eq!(s.on_snapshot(&v2), None);
}

#[test]
fn a_stale_nonce_is_ignored() {
    let mut s = Session::default();
    let v1 = snapshot("v1", &["meshward.jwt"]);
    s.on_request(request(&["meshward.jwt"], ""), Some(&v1)).unwrap();
    let v2 = snapshot("v2", &["meshward.jwt"]);
    s.on_snapshot(&v2).unwrap();
    // The ACK of v1 crosses v2 on the wire: neither reported nor answered.
    assert_eq!(s.on_request(request(&["meshward.jwt"], "1"), Some(&v2)).unwrap(), Step::default());
    let step = s.on_request(request(&["meshward.jwt"], "2"), Some(&v2)).unwrap();
    assert_eq!(step.events, vec![Event::Applied { node: "crapi-1".into(), version: "v2".into(), names: vec!["meshward.jwt".into()] }]);
}

#[test]
fn a_changed_subscription_is_answered_even_at_the_same_version() {
    let mut s = Session::default();
    let v1 = snapshot("v1", &["meshward.jwt", "meshward.schema"]);
    s.on_request(request(&["meshward.jwt"], ""), Some(&v1)).unwrap();
    let step = s.on_request(request(&["meshward.jwt", "meshward.schema"], "1"), Some(&v1)).unwrap();
    assert_eq!(sent(&step).2.len(), 2);
    assert_eq!(sent(&step).1, "2");
}

#[test]
fn filters_the_policy_does_not_render_are_named() {
    let mut s = Session::default();
    let step = s.on_request(request(&["meshward.jwt", "meshward.webhook"], ""), Some(&snapshot("v1", &["meshward.jwt"]))).unwrap();
    assert_eq!(step.events, vec![Event::Unknown { node: "crapi-1".into(), names: vec!["meshward.webhook".into()] }]);
    assert_eq!(sent(&step).2, vec!["meshward.jwt@v1".to_string()]);
}

#[test]
fn other_resource_types_are_refused() {
    let mut s = Session::default();
    let r = DiscoveryRequest { type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(), ..request(&[], "") };
    assert!(s.on_request(r, None).unwrap_err().0.contains("Listener"));
}

#[test]
fn before_the_first_snapshot_nothing_is_sent_and_the_first_one_is() {
    let mut s = Session::default();
    assert_eq!(s.on_request(request(&["meshward.jwt"], ""), None).unwrap().response, None);
    assert!(s.on_snapshot(&snapshot("v1", &["meshward.jwt"])).is_some());
}

#[test]
fn a_new_version_that_leaves_a_filter_as_it_was_is_not_sent_to_it() {
    let mut jwt = Session::default();
    let mut ratelimit = Session::default();
    let v1 = Snapshot { version: "v1".into(), resources: vec![("meshward.jwt".into(), resource("a")), ("meshward.ratelimit".into(), resource("b"))] };
    jwt.on_request(request(&["meshward.jwt"], ""), Some(&v1)).unwrap();
    ratelimit.on_request(request(&["meshward.ratelimit"], ""), Some(&v1)).unwrap();
    let v2 = Snapshot { version: "v2".into(), resources: vec![("meshward.jwt".into(), resource("a")), ("meshward.ratelimit".into(), resource("c"))] };
    assert_eq!(jwt.on_snapshot(&v2), None);
    assert_eq!(ratelimit.on_snapshot(&v2).map(|r| r.version_info), Some("v2".into()));
    // Nor is it answered when the Envoy comes back with the same subscription.
    assert_eq!(jwt.on_request(request(&["meshward.jwt"], "1"), Some(&v2)).unwrap().response, None);
}
