//! Every counter meshward writes, declared once (as Envoy's `jwt_authn` declares its stats in
//! `stats.h`): the per-decision families the runtime writes for every stage, and each policy's
//! own. A counter is written through [`count`], so no name is spelled twice.

use std::cell::RefCell;
use std::rc::Rc;

use meshward_host::Host;

/// What a stage decided, as the runtime counts it for every stage:
/// `meshward_<stage>_<decision>_total[.route.<route>][.reason.<reason>]` ([`decision_counter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    /// Shadow mode: would have denied.
    ShadowDenied,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::ShadowDenied => "shadow_denied",
        }
    }
}

/// Counter name for a decision of the stage `stage`, on a named route or not.
pub fn decision_counter(stage: &str, decision: Decision, route: Option<&str>, reason: Option<&str>) -> String {
    let mut out = format!("meshward_{stage}_{}_total", decision.name());
    if let Some(route) = route {
        out.push_str(".route.");
        out.push_str(route);
    }
    if let Some(reason) = reason {
        out.push_str(".reason.");
        out.push_str(reason);
    }
    out
}

/// A decision counter's name, built once per VM: (stage, decision, route, reason) → name.
struct NamedDecision {
    stage: &'static str,
    decision: Decision,
    route: Option<String>,
    reason: Option<&'static str>,
    name: Rc<str>,
}

/// Names kept per VM; routes are rule names from the configuration, so the set is small. A VM
/// that sees more (configurations pushed over time) starts again.
const NAMES_KEPT: usize = 1024;

thread_local! {
    static DECISION_NAMES: RefCell<Vec<NamedDecision>> = const { RefCell::new(Vec::new()) };
}

/// Adds one to the decision counter of a stage ([`decision_counter`]), without building its
/// name on every request.
pub fn count_decision(host: &mut dyn Host, stage: &'static str, decision: Decision, route: Option<&str>, reason: Option<&'static str>) {
    let name = DECISION_NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(known) = names
            .iter()
            .find(|n| n.stage == stage && n.decision == decision && n.reason == reason && n.route.as_deref() == route)
        {
            return Rc::clone(&known.name);
        }
        if names.len() >= NAMES_KEPT {
            names.clear();
        }
        let name: Rc<str> = Rc::from(decision_counter(stage, decision, route, reason));
        names.push(NamedDecision { stage, decision, route: route.map(str::to_string), reason, name: Rc::clone(&name) });
        name
    });
    host.increment_counter(&name, 1);
}

/// A policy's own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// A remote JWKS fetch succeeded / failed.
    JwtJwksFetchOk,
    JwtJwksFetchFailed,
    /// An ownership rule's audited bypass let a principal skip object checks.
    OwnershipBypass,
    /// A rate-limit key was evicted from the full local table.
    RatelimitEvictions,
    /// The global rate-limit service failed (unavailable, timeout, bad answer).
    RatelimitServiceFailures,
    /// Fields cut from an answer (`strip`); in shadow mode, answers that would have been cut.
    SchemaStripped,
    SchemaShadowStripped,
    /// A body of a media type the operation lets through unchecked (`unchecked_media_types`).
    SchemaUncheckedBody,
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::JwtJwksFetchOk,
        Counter::JwtJwksFetchFailed,
        Counter::OwnershipBypass,
        Counter::RatelimitEvictions,
        Counter::RatelimitServiceFailures,
        Counter::SchemaStripped,
        Counter::SchemaShadowStripped,
        Counter::SchemaUncheckedBody,
    ];

    /// The name in Envoy's stats (`wasmcustom.` is prefixed by Envoy).
    pub fn name(self) -> &'static str {
        match self {
            Counter::JwtJwksFetchOk => "meshward_jwt_jwks_fetch_ok",
            Counter::JwtJwksFetchFailed => "meshward_jwt_jwks_fetch_failed",
            Counter::OwnershipBypass => "meshward_ownership_bypass_total",
            Counter::RatelimitEvictions => "meshward_ratelimit_evictions_total",
            Counter::RatelimitServiceFailures => "meshward_ratelimit_service_failures_total",
            Counter::SchemaStripped => "meshward_schema_stripped_total",
            Counter::SchemaShadowStripped => "meshward_schema_shadow_stripped_total",
            Counter::SchemaUncheckedBody => "meshward_schema_unchecked_body_total",
        }
    }
}

/// Adds one to a policy counter.
pub fn count(host: &mut dyn Host, counter: Counter) {
    host.increment_counter(counter.name(), 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_under_their_names() {
        let mut host = meshward_host::FakeHost::default();
        count_decision(&mut host, "jwt", Decision::Allowed, Some("orders"), None);
        count_decision(&mut host, "jwt", Decision::Allowed, Some("orders"), None);
        count_decision(&mut host, "jwt", Decision::Allowed, None, None);
        count_decision(&mut host, "jwt", Decision::Denied, Some("orders"), Some("expired"));
        count_decision(&mut host, "ratelimit", Decision::ShadowDenied, None, Some("rate_limited"));
        assert_eq!(host.counter("meshward_jwt_allowed_total.route.orders"), 2);
        assert_eq!(host.counter("meshward_jwt_allowed_total"), 1);
        assert_eq!(host.counter("meshward_jwt_denied_total.route.orders.reason.expired"), 1);
        assert_eq!(host.counter("meshward_ratelimit_shadow_denied_total.reason.rate_limited"), 1);
    }

    #[test]
    fn names_are_unique_and_namespaced() {
        let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(n.starts_with("meshward_") && !names[..i].contains(n), "{n}");
        }
    }
}
