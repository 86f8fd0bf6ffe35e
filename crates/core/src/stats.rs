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

/// A decision counter's name, built once per VM: (stage, decision, route, reason) → name, and
/// the allowed decisions added up since the last [`flush_decisions`].
struct NamedDecision {
    stage: &'static str,
    decision: Decision,
    route: Option<String>,
    reason: Option<&'static str>,
    name: Rc<str>,
    pending: u64,
}

/// Names kept per VM; routes are rule names from the configuration, so the set is small. A VM
/// that sees more (configurations pushed over time) starts again.
const NAMES_KEPT: usize = 1024;

thread_local! {
    static DECISION_NAMES: RefCell<Vec<NamedDecision>> = const { RefCell::new(Vec::new()) };
}

/// Counts a decision of a stage under its counter ([`decision_counter`]), without building the
/// name on every request. Allowed decisions — nearly every request — are added up in the VM and
/// written by [`flush_decisions`] (the runtime flushes every second and when the VM stops), which
/// saves a hostcall per stage per request; denials are written at once.
pub fn count_decision(host: &mut dyn Host, stage: &'static str, decision: Decision, route: Option<&str>, reason: Option<&'static str>) {
    let batched = decision == Decision::Allowed;
    let write_now = DECISION_NAMES.with(|names| {
        let mut names = names.borrow_mut();
        let known = names
            .iter()
            .position(|n| n.stage == stage && n.decision == decision && n.reason == reason && n.route.as_deref() == route);
        let index = match known {
            Some(index) => index,
            None => {
                if names.len() >= NAMES_KEPT {
                    write_pending(host, &mut names);
                    names.clear();
                }
                let name: Rc<str> = Rc::from(decision_counter(stage, decision, route, reason));
                names.push(NamedDecision { stage, decision, route: route.map(str::to_string), reason, name, pending: 0 });
                names.len() - 1
            }
        };
        let entry = &mut names[index];
        if batched {
            entry.pending += 1;
            None
        } else {
            Some(Rc::clone(&entry.name))
        }
    });
    if let Some(name) = write_now {
        host.increment_counter(&name, 1);
    }
}

/// Writes the allowed decisions counted since the last flush.
pub fn flush_decisions(host: &mut dyn Host) {
    DECISION_NAMES.with(|names| write_pending(host, &mut names.borrow_mut()));
}

fn write_pending(host: &mut dyn Host, names: &mut [NamedDecision]) {
    for entry in names.iter_mut().filter(|n| n.pending > 0) {
        host.increment_counter(&entry.name, entry.pending);
        entry.pending = 0;
    }
}

/// A policy's own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// A remote JWKS fetch succeeded / failed.
    JwtJwksFetchOk,
    JwtJwksFetchFailed,
    /// A token refused from memory: the same token's signature failed before (no verification).
    JwtRefusedFromMemory,
    /// An ownership rule's audited bypass let a principal skip object checks.
    OwnershipBypass,
    /// A rate-limit key was evicted from the full local table.
    RatelimitEvictions,
    /// The global rate-limit service failed (unavailable, timeout, bad answer).
    RatelimitServiceFailures,
    /// A failure (a `counts: failures` rule's status) was counted against its key.
    RatelimitFailuresCounted,
    /// Fields cut from an answer (`strip`); in shadow mode, answers that would have been cut.
    SchemaStripped,
    SchemaShadowStripped,
    /// A body of a media type the operation lets through unchecked (`unchecked_media_types`).
    SchemaUncheckedBody,
    /// The fleet engine did not answer a replay claim (the endpoint's `failure_mode` applied).
    WebhookReplayServiceFailures,
    /// The engine did not record a delivery's outcome (engine down, storage down): kept by the
    /// sidecar and sent again ([`crate::unsettled`]); the delivery stays in flight meanwhile.
    WebhookSettleFailures,
    /// A stored answer was given back for a retried idempotency key (in shadow mode: would
    /// have been; the request went on).
    IdempotencyReplays,
    /// An answer was stored for an idempotency key.
    IdempotencyStored,
    /// An answer was not stored (5xx, larger than `max_answer_bytes`, not from the upstream):
    /// the key was released and a retry goes through.
    IdempotencyNotStored,
    /// The fleet engine did not answer a claim (the `failure_mode` applied).
    IdempotencyServiceFailures,
    /// The engine did not record a request's outcome (engine down, storage down): kept by the
    /// sidecar and sent again ([`crate::unsettled`]); the key stays in flight meanwhile.
    IdempotencySettleFailures,
    /// An outcome the engine had not recorded reached it when sent again.
    FleetSettlesRecovered,
    /// An outcome the engine did not record could not be kept for another try (the sidecar's
    /// store is full): its key stays in flight until its window ends.
    FleetSettlesLost,
    /// The engine held a key for another claim when this request's outcome came: the engine
    /// lost the claim (Redis without persistence?) and the request may have run twice.
    FleetSettleConflicts,
}

impl Counter {
    pub const ALL: [Counter; 20] = [
        Counter::JwtJwksFetchOk,
        Counter::JwtJwksFetchFailed,
        Counter::JwtRefusedFromMemory,
        Counter::OwnershipBypass,
        Counter::RatelimitEvictions,
        Counter::RatelimitServiceFailures,
        Counter::RatelimitFailuresCounted,
        Counter::SchemaStripped,
        Counter::SchemaShadowStripped,
        Counter::SchemaUncheckedBody,
        Counter::WebhookReplayServiceFailures,
        Counter::WebhookSettleFailures,
        Counter::IdempotencyReplays,
        Counter::IdempotencyStored,
        Counter::IdempotencyNotStored,
        Counter::IdempotencyServiceFailures,
        Counter::IdempotencySettleFailures,
        Counter::FleetSettlesRecovered,
        Counter::FleetSettlesLost,
        Counter::FleetSettleConflicts,
    ];

    /// The name in Envoy's stats (`wasmcustom.` is prefixed by Envoy).
    pub fn name(self) -> &'static str {
        match self {
            Counter::JwtJwksFetchOk => "meshward_jwt_jwks_fetch_ok",
            Counter::JwtJwksFetchFailed => "meshward_jwt_jwks_fetch_failed",
            Counter::JwtRefusedFromMemory => "meshward_jwt_refused_from_memory_total",
            Counter::OwnershipBypass => "meshward_ownership_bypass_total",
            Counter::RatelimitEvictions => "meshward_ratelimit_evictions_total",
            Counter::RatelimitServiceFailures => "meshward_ratelimit_service_failures_total",
            Counter::RatelimitFailuresCounted => "meshward_ratelimit_failures_counted_total",
            Counter::SchemaStripped => "meshward_schema_stripped_total",
            Counter::SchemaShadowStripped => "meshward_schema_shadow_stripped_total",
            Counter::SchemaUncheckedBody => "meshward_schema_unchecked_body_total",
            Counter::WebhookReplayServiceFailures => "meshward_webhook_replay_service_failures_total",
            Counter::WebhookSettleFailures => "meshward_webhook_settle_failures_total",
            Counter::IdempotencyReplays => "meshward_idempotency_replays_total",
            Counter::IdempotencyStored => "meshward_idempotency_stored_total",
            Counter::IdempotencyNotStored => "meshward_idempotency_not_stored_total",
            Counter::IdempotencyServiceFailures => "meshward_idempotency_service_failures_total",
            Counter::IdempotencySettleFailures => "meshward_idempotency_settle_failures_total",
            Counter::FleetSettlesRecovered => "meshward_fleet_settles_recovered_total",
            Counter::FleetSettlesLost => "meshward_fleet_settles_lost_total",
            Counter::FleetSettleConflicts => "meshward_fleet_settle_conflicts_total",
        }
    }
}

/// Adds one to a policy counter.
pub fn count(host: &mut dyn Host, counter: Counter) {
    host.increment_counter(counter.name(), 1);
}

/// The gauge saying which configuration a module runs: `<module>_config_info.config.<fingerprint>`
/// (`meshward_jwt_config_info{config="…"} 1`; the bundle's is `meshward_config_info`).
pub fn config_info_gauge(module: &str, fingerprint: &str) -> String {
    format!("{module}_config_info.config.{fingerprint}")
}

thread_local! {
    /// The configuration gauge this VM last set to 1.
    static CONFIG_INFO: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Publishes that this VM now runs `configuration` (its previous one's gauge goes to 0), so a
/// proxy's metrics say which policy version it enforces.
pub fn publish_configuration(host: &mut dyn Host, module: &str, configuration: &[u8]) {
    let name = config_info_gauge(module, &crate::config::fingerprint(configuration));
    let previous = CONFIG_INFO.with(|last| last.borrow_mut().replace(name.clone()));
    if let Some(previous) = previous.filter(|p| *p != name) {
        host.set_gauge(&previous, 0);
    }
    host.set_gauge(&name, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_under_their_names() {
        // Tests share one thread on wasm32: start from no pending counts.
        flush_decisions(&mut meshward_host::FakeHost::default());
        let mut host = meshward_host::FakeHost::default();
        count_decision(&mut host, "jwt", Decision::Allowed, Some("orders"), None);
        count_decision(&mut host, "jwt", Decision::Allowed, Some("orders"), None);
        count_decision(&mut host, "jwt", Decision::Allowed, None, None);
        count_decision(&mut host, "jwt", Decision::Denied, Some("orders"), Some("expired"));
        count_decision(&mut host, "ratelimit", Decision::ShadowDenied, None, Some("rate_limited"));
        // Denials at once; allowed decisions at the next flush, added up.
        assert_eq!(host.counter("meshward_jwt_denied_total.route.orders.reason.expired"), 1);
        assert_eq!(host.counter("meshward_jwt_allowed_total.route.orders"), 0);
        flush_decisions(&mut host);
        assert_eq!(host.counter("meshward_jwt_allowed_total.route.orders"), 2);
        assert_eq!(host.counter("meshward_jwt_allowed_total"), 1);
        assert_eq!(host.counter("meshward_jwt_denied_total.route.orders.reason.expired"), 1);
        assert_eq!(host.counter("meshward_ratelimit_shadow_denied_total.reason.rate_limited"), 1);
        count_decision(&mut host, "jwt", Decision::Allowed, Some("orders"), None);
        flush_decisions(&mut host);
        flush_decisions(&mut host);
        assert_eq!(host.counter("meshward_jwt_allowed_total.route.orders"), 3, "each decision written once");
    }

    #[test]
    fn the_configuration_a_vm_runs_is_published() {
        let mut host = meshward_host::FakeHost::default();
        publish_configuration(&mut host, "meshward_jwt", b"{}");
        let first = config_info_gauge("meshward_jwt", &crate::config::fingerprint(b"{}"));
        assert_eq!(host.gauges.get(&first), Some(&1));
        publish_configuration(&mut host, "meshward_jwt", b"{\"mode\":\"shadow\"}");
        let second = config_info_gauge("meshward_jwt", &crate::config::fingerprint(b"{\"mode\":\"shadow\"}"));
        assert_eq!((host.gauges.get(&first), host.gauges.get(&second)), (Some(&0), Some(&1)));
        publish_configuration(&mut host, "meshward_jwt", b"{\"mode\":\"shadow\"}");
        assert_eq!(host.gauges.get(&second), Some(&1), "the same configuration again stays 1");
    }

    #[test]
    fn names_are_unique_and_namespaced() {
        let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(n.starts_with("meshward_") && !names[..i].contains(n), "{n}");
        }
    }
}
