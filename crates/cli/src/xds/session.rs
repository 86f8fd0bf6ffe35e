//! One Envoy's ECDS stream, state of the world: what it asked for, what it was sent, what it
//! applied or rejected. Pure (no I/O), so the protocol rules sit in one place with their tests;
//! the gRPC glue (`server.rs`) feeds it requests and new snapshots and sends what it returns.
//!
//! Rules (Envoy's xDS protocol, SotW): the first request and every change of the requested names
//! get the current snapshot; a request whose nonce is not the last one sent is stale and ignored;
//! a request carrying the last nonce acknowledges that response, or rejects it when it has an
//! `error_detail`; a rejected configuration is not sent again, a different one is. A new policy
//! version reaches a stream only if it changes that stream's filters: Envoy rebuilds a filter
//! it is sent, so the filters a change does not touch keep their running plugin untouched.

use bytes::Bytes;

use super::proto::{DiscoveryRequest, TYPED_EXTENSION_CONFIG};

/// Every filter configuration of one accepted policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: String,
    /// (resource name `meshward.<filter>`, its `TypedExtensionConfig` as a response's resource
    /// entry: encoded once, shared by every stream)
    pub resources: Vec<(String, Bytes)>,
}

/// A response to send: the resource entries are the snapshot's own bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub version_info: String,
    pub nonce: String,
    pub resources: Vec<Bytes>,
}

/// What happened on a stream that the operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The Envoy applied a version of these filters.
    Applied { node: String, version: String, names: Vec<String> },
    /// The Envoy refused a version; it keeps running the last one it applied.
    Rejected { node: String, version: String, names: Vec<String>, message: String },
    /// The Envoy asks for filters this policy does not render (its configuration was rendered
    /// from another policy): they get nothing, and keep waiting for a configuration.
    Unknown { node: String, names: Vec<String> },
}

/// A request meshward cannot serve; the stream ends with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

#[derive(Debug)]
struct Sent {
    version: String,
    nonce: String,
    names: Vec<String>,
    /// The snapshot's bytes (shared, not copied).
    resources: Vec<Bytes>,
}

/// One stream's protocol state; one per connected Envoy subscription.
#[derive(Debug, Default)]
pub struct Session {
    node: String,
    /// Names the Envoy subscribed to, sorted; empty means all (wildcard).
    requested: Vec<String>,
    subscribed: bool,
    /// The last response.
    sent: Option<Sent>,
    nonces: u64,
}

/// What a request leads to.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    pub events: Vec<Event>,
    pub response: Option<Reply>,
}

impl Session {
    /// The Envoy's node id, once its first request named it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A request from the Envoy, with the snapshot being served now (`None` before the first).
    pub fn on_request(&mut self, request: DiscoveryRequest, current: Option<&Snapshot>) -> Result<Step, Refusal> {
        if request.type_url != TYPED_EXTENSION_CONFIG {
            return Err(Refusal(format!(
                "meshward serve only serves extension configurations ({TYPED_EXTENSION_CONFIG}), not {:?}",
                request.type_url
            )));
        }
        if let Some(node) = request.node.filter(|n| !n.id.is_empty()) {
            self.node = node.id;
        }
        let mut step = Step::default();
        if !request.response_nonce.is_empty() {
            let Some(sent) = self.sent.as_ref().filter(|s| s.nonce == request.response_nonce) else {
                // An answer to an older response: a newer one is on its way.
                return Ok(step);
            };
            let (node, version, names) = (self.node.clone(), sent.version.clone(), sent.names.clone());
            step.events.push(match request.error_detail {
                Some(status) => Event::Rejected { node, version, names, message: status.message },
                None => Event::Applied { node, version, names },
            });
        }
        let mut names = request.resource_names;
        names.sort();
        names.dedup();
        let first = !self.subscribed;
        let changed = names != self.requested;
        self.subscribed = true;
        self.requested = names;
        if first || changed {
            if let Some(snapshot) = current {
                let unknown: Vec<String> =
                    self.requested.iter().filter(|n| !snapshot.resources.iter().any(|(r, _)| r == *n)).cloned().collect();
                if !unknown.is_empty() {
                    step.events.push(Event::Unknown { node: self.node.clone(), names: unknown });
                }
            }
        }
        if let Some(snapshot) = current {
            if first || changed || !self.has(snapshot) {
                step.response = Some(self.respond(snapshot));
            }
        }
        Ok(step)
    }

    /// A new policy version: sent to an Envoy that subscribed and whose filters it changes.
    pub fn on_snapshot(&mut self, current: &Snapshot) -> Option<Reply> {
        (self.subscribed && !self.has(current)).then(|| self.respond(current))
    }

    /// Whether the last response carried exactly what `snapshot` has for this stream.
    fn has(&self, snapshot: &Snapshot) -> bool {
        let Some(sent) = &self.sent else { return false };
        let mut wanted = snapshot.resources.iter().filter(|(n, _)| self.wanted(n));
        sent.resources.len() == wanted.clone().count() && wanted.all(|(_, r)| sent.resources.contains(r))
    }

    fn wanted(&self, name: &str) -> bool {
        self.requested.is_empty() || self.requested.iter().any(|n| n == name)
    }

    fn respond(&mut self, snapshot: &Snapshot) -> Reply {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let (names, resources): (Vec<String>, Vec<Bytes>) = snapshot.resources.iter().filter(|(n, _)| self.wanted(n)).cloned().unzip();
        self.sent = Some(Sent { version: snapshot.version.clone(), nonce: nonce.clone(), names, resources: resources.clone() });
        Reply { version_info: snapshot.version.clone(), resources, nonce }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
