//! The rate-limit policy as a [`Policy`] / [`Stage`]: every matching rule must pass; local
//! rules are decided here (GCRA in a [`SlotTable`]), global rules by the rate-limit service.

use std::rc::Rc;

use meshward_core::clock::unix_micros;
use meshward_core::caller::Caller;
use meshward_core::principal::current_principal;
use meshward_core::workload::current_workload;
use meshward_core::shared::{SlotError, SlotTable, WhenFull};
use meshward_core::{config::ConfigError, GrpcResponse, Mode, Policy, RequestState, Stage, Step};
use meshward_core::stats::{count, Counter};
use meshward_host::{Host, LogLevel};

use crate::config::{AppliesTo, KeyPart, RateLimitConfig, Rule, Scope};
use meshward_core::fleet::FailureMode;
use crate::gcra;
use crate::rls;
use crate::RateLimitError;

/// Stands for a key part the request does not have (all such requests share one budget). A
/// value the request does carry never reads as it ([`key_part`]).
pub const MISSING: &str = "-";

/// A present key part as it goes into the key: unchanged, unless it starts with `-` or `%`,
/// which gets a `%` in front. So a header whose value is `-` does not share the missing-header
/// budget, and different values stay different (descriptors sent to a rate-limit service keep
/// ordinary values as they are).
pub fn key_part(value: String) -> String {
    if value.starts_with(['-', '%']) {
        format!("%{value}")
    } else {
        value
    }
}

/// The local key of a rule: each part with its length in front, so no value can run into the
/// next part whatever characters it holds.
pub fn local_key(values: &[String]) -> String {
    let mut key = String::new();
    for v in values {
        key.push_str(&v.len().to_string());
        key.push(':');
        key.push_str(v);
    }
    key
}

#[derive(Debug)]
pub struct RateLimitPolicy {
    pub config: RateLimitConfig,
    tables: Vec<SlotTable>,
    /// Some rule's key names `client_ip`.
    reads_client_ip: bool,
    /// Some rule depends on the principal (its key, or whom it applies to).
    reads_principal: bool,
    /// Some rule's key names the calling workload.
    reads_workload: bool,
}

impl RateLimitPolicy {
    pub fn new(config: RateLimitConfig) -> Self {
        let tables = config
            .rules
            .iter()
            .map(|r| SlotTable::new(format!("meshward_ratelimit/{}", r.name), config.max_keys))
            .collect();
        let reads_client_ip = config.rules.iter().any(|r| r.key.contains(&KeyPart::ClientIp));
        let reads_principal = config.rules.iter().any(|r| r.applies_to != AppliesTo::All);
        let reads_workload = config.rules.iter().any(|r| r.key.iter().any(|k| matches!(k, KeyPart::Workload(_))));
        RateLimitPolicy { config, tables, reads_client_ip, reads_principal, reads_workload }
    }
}

impl Policy for RateLimitPolicy {
    const NAME: &'static str = "ratelimit";
    type Stage = RateLimitStage;

    fn configure(config: &[u8], _host: &dyn Host) -> Result<Self, ConfigError> {
        RateLimitConfig::parse(config).map(RateLimitPolicy::new)
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn start(policy: &Rc<Self>, host: &mut dyn Host) {
        for (rule, table) in policy.config.rules.iter().zip(&policy.tables) {
            if rule.scope == Scope::Local {
                table.create(host);
            }
        }
    }

    fn new_stage(policy: &Rc<Self>) -> RateLimitStage {
        RateLimitStage { policy: Rc::clone(policy), global_queue: Vec::new(), pending: None, headers: None, failure_keys: Vec::new() }
    }
}

/// The values of a key's parts, in rule order ([`MISSING`] for a part the request lacks):
/// from the caller (user, workload), its peer address (`client_ip`, without the port) and the
/// request's headers.
pub fn key_values(rule: &Rule, caller: Caller<'_>, client_ip: Option<&str>, header: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let principal = caller.user;
    rule.key
        .iter()
        .map(|part| {
            let value = match part {
                KeyPart::Subject => principal.and_then(|p| p.subject.clone()),
                KeyPart::Tenant => principal.and_then(|p| p.tenant.clone()),
                KeyPart::Claim(name) => principal.and_then(|p| match p.claim(name)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                }),
                KeyPart::Header(name) => header(name),
                KeyPart::ClientIp => client_ip.map(str::to_string),
                KeyPart::Workload(part) => caller.workload.and_then(|w| part.of(w)),
            };
            value.filter(|v| !v.is_empty()).map_or_else(|| MISSING.to_string(), key_part)
        })
        .collect()
}

/// The peer address without its port (`10.0.0.1:5000` → `10.0.0.1`, `[::1]:5000` → `::1`).
pub fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

/// The RateLimit-* header values to put on the response: (limit, remaining, reset seconds).
type Headers = (u64, u64, u64);

/// One request's walk through the rate-limit rules.
#[derive(Debug)]
pub struct RateLimitStage {
    policy: Rc<RateLimitPolicy>,
    /// Global rule hits still to ask the service about: (rule index, descriptor).
    global_queue: Vec<(usize, Vec<(String, String)>)>,
    /// The call in flight: (token, rule index).
    pending: Option<(u32, usize)>,
    headers: Option<Headers>,
    /// The `counts: failures` rules this request fell under when it arrived, with its key in
    /// each: (rule index, local key). Only such requests are counted, as they were checked, in
    /// every deployment form alike (a local reply from a module before this one still runs
    /// through its response callbacks, for a request this stage never saw).
    failure_keys: Vec<(usize, String)>,
}

impl RateLimitStage {
    fn tighten(&mut self, limit: u64, remaining: u64, reset: u64) {
        if self.headers.is_none_or(|(_, r, _)| remaining < r) {
            self.headers = Some((limit, remaining, reset));
        }
    }

    /// Asks the service about the next global hit, or finishes.
    fn next_global(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let Some(global) = &self.policy.config.global else { return Step::Continue };
        let Some((index, descriptor)) = self.global_queue.pop() else { return Step::Continue };
        let cost = self.policy.config.rules.get(index).map(|r| r.cost).unwrap_or(1);
        let message = rls::encode_request(&global.domain, &[descriptor], u32::try_from(cost).unwrap_or(u32::MAX));
        match host.dispatch_grpc_call(&global.cluster, rls::SERVICE, rls::METHOD, &message, global.timeout) {
            Ok(token) => {
                self.pending = Some((token, index));
                Step::Pause
            }
            Err(e) => {
                host.log(LogLevel::Warn, &format!("meshward_ratelimit: cannot call the rate-limit service: {e}"));
                self.service_failed(host, request)
            }
        }
    }

    /// Counts the answer against the `counts: failures` rules the request fell under that name
    /// its status, whichever stage or module refused it, or the service.
    fn count_failure(&self, host: &mut dyn Host) {
        let Some(status) = host.response_header(":status").and_then(|s| s.parse::<u16>().ok()) else { return };
        let now = unix_micros(host);
        for (index, id) in &self.failure_keys {
            let (Some(rule), Some(table)) = (self.policy.config.rules.get(*index), self.policy.tables.get(*index)) else { continue };
            let (Some(statuses), Some(limit)) = (rule.failure_statuses(), rule.limit) else { continue };
            if !statuses.contains(&status) {
                continue;
            }
            // A key already out of budget stays so; it is refused until it refills.
            let spend = |tat: Option<u64>| {
                let d = gcra::decide(&limit, tat, now, rule.cost);
                if d.allowed { Ok((d.new_tat, ())) } else { Err(()) }
            };
            match table.update(host, id, now, WhenFull::EvictOldest, spend) {
                Ok(updated) => {
                    count(host, Counter::RatelimitFailuresCounted);
                    if updated.evicted {
                        count(host, Counter::RatelimitEvictions);
                    }
                }
                Err(SlotError::Rejected(())) => {}
                Err(SlotError::Full | SlotError::Unavailable) => {
                    host.log(LogLevel::Warn, &format!("meshward_ratelimit: rule {}: a failure could not be counted", rule.name));
                }
            }
        }
    }

    fn service_failed(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        count(host, Counter::RatelimitServiceFailures);
        let fail_closed = self.policy.config.global.as_ref().is_some_and(|g| g.failure_mode == FailureMode::Deny);
        if fail_closed {
            self.global_queue.clear();
            return Step::Deny(RateLimitError::ServiceUnavailable.denial());
        }
        self.next_global(host, request)
    }
}

impl Stage for RateLimitStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        let principal = if policy.reads_principal { current_principal(host, &mut request.principal) } else { None };
        // The peer address is read only when a rule's key names it (one hostcall saved).
        let client_ip = if policy.reads_client_ip {
            host.property(&["source", "address"]).and_then(|b| String::from_utf8(b).ok())
        } else {
            None
        };
        let client_ip = client_ip.as_deref().map(strip_port);
        let workload = if policy.reads_workload { current_workload(host, request) } else { None };
        let caller = Caller { user: principal.as_deref(), workload: workload.as_deref() };
        let now = unix_micros(host);
        for (index, (rule, table)) in policy.config.rules.iter().zip(&policy.tables).enumerate() {
            if rule.route.captures(request.route_method(), &request.canonical).is_none() {
                continue;
            }
            let applies = match rule.applies_to {
                AppliesTo::All => true,
                AppliesTo::Authenticated => principal.is_some(),
                AppliesTo::Unauthenticated => principal.is_none(),
            };
            if !applies {
                continue;
            }
            let seen: &RequestState = request;
            let values = key_values(rule, caller, client_ip, &|name| seen.header(name).map(str::to_string));
            request.route = Some(rule.name.clone());
            match (rule.scope, rule.limit) {
                // Failures spend the budget when they are answered; here it is only looked at.
                (Scope::Local, Some(limit)) if rule.failure_statuses().is_some() => {
                    let id = local_key(&values);
                    let d = gcra::decide(&limit, table.get(host, &id, now), now, rule.cost);
                    if !d.allowed {
                        self.headers = Some((limit.burst, d.remaining, d.reset_secs));
                        return Step::Deny(RateLimitError::RateLimited { retry_after_secs: d.retry_after_secs }.denial());
                    }
                    self.failure_keys.push((index, id));
                }
                (Scope::Local, Some(limit)) => {
                    let id = local_key(&values);
                    let decide = |tat: Option<u64>| {
                        let d = gcra::decide(&limit, tat, now, rule.cost);
                        if d.allowed { Ok((d.new_tat, d)) } else { Err(d) }
                    };
                    match table.update(host, &id, now, WhenFull::EvictOldest, decide) {
                        Ok(updated) => {
                            if updated.evicted {
                                count(host, Counter::RatelimitEvictions);
                            }
                            let d = updated.result;
                            self.tighten(limit.burst, d.remaining, d.reset_secs);
                        }
                        Err(SlotError::Rejected(d)) => {
                            self.headers = Some((limit.burst, d.remaining, d.reset_secs));
                            return Step::Deny(RateLimitError::RateLimited { retry_after_secs: d.retry_after_secs }.denial());
                        }
                        Err(SlotError::Full | SlotError::Unavailable) => {
                            return Step::Deny(RateLimitError::StateUnavailable.denial());
                        }
                    }
                }
                _ => {
                    let mut descriptor = vec![("rule".to_string(), rule.name.clone())];
                    descriptor.extend(rule.key.iter().map(KeyPart::descriptor_key).zip(values));
                    self.global_queue.insert(0, (index, descriptor));
                }
            }
        }
        self.next_global(host, request)
    }

    fn on_grpc_response(&mut self, host: &mut dyn Host, request: &mut RequestState, token: u32, response: GrpcResponse) -> Step {
        let Some((pending, index)) = self.pending else { return Step::Pause };
        if pending != token {
            return Step::Pause;
        }
        self.pending = None;
        let verdict = if response.status == 0 { rls::decode_response(&response.message) } else { None };
        let Some(verdict) = verdict else {
            host.log(LogLevel::Warn, &format!("meshward_ratelimit: rate-limit service failed (grpc status {})", response.status));
            return self.service_failed(host, request);
        };
        if let Some(rule) = self.policy.config.rules.get(index) {
            request.route = Some(rule.name.clone());
        }
        if let (Some(limit), Some(remaining)) = (verdict.limit, verdict.remaining) {
            self.tighten(limit, remaining, verdict.reset_secs.unwrap_or(0));
        }
        if verdict.over_limit {
            self.global_queue.clear();
            let retry_after_secs = verdict.reset_secs.unwrap_or(1).max(1);
            return Step::Deny(RateLimitError::RateLimited { retry_after_secs }.denial());
        }
        self.next_global(host, request)
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, _request: &mut RequestState) -> Step {
        if !self.failure_keys.is_empty() {
            self.count_failure(host);
        }
        if let Some((limit, remaining, reset)) = self.headers {
            host.set_response_header("ratelimit-limit", Some(&limit.to_string()));
            host.set_response_header("ratelimit-remaining", Some(&remaining.to_string()));
            host.set_response_header("ratelimit-reset", Some(&reset.to_string()));
        }
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshward_core::workload::Workload;

    #[test]
    fn a_value_never_reads_as_a_missing_part_or_as_another_value() {
        let config = crate::RateLimitConfig::parse(
            br#"{"rules": [{"name": "k", "match": {"prefix": "/"}, "key": ["header:x-api-key", "client_ip"], "limit": {"requests": 1, "per": "1s"}}]}"#,
        )
        .unwrap();
        let rule = &config.rules[0];
        let keys = |header: Option<&str>, ip: Option<&str>| key_values(rule, Caller::default(), ip, &|_| header.map(str::to_string));
        // (header, client ip) → key values
        let rows: [(Option<&str>, Option<&str>, [&str; 2]); 6] = [
            (None, Some("10.0.0.1"), ["-", "10.0.0.1"]),
            (Some(""), Some("10.0.0.1"), ["-", "10.0.0.1"]),
            (Some("-"), Some("10.0.0.1"), ["%-", "10.0.0.1"]),
            (Some("%-"), None, ["%%-", "-"]),
            (Some("-x"), None, ["%-x", "-"]),
            (Some("abc"), Some("::1"), ["abc", "::1"]),
        ];
        for (header, ip, want) in rows {
            assert_eq!(keys(header, ip), want, "{header:?} {ip:?}");
        }
        // Parts cannot run into each other in the local key.
        assert_ne!(local_key(&["a\u{1f}b".into(), "c".into()]), local_key(&["a".into(), "b\u{1f}c".into()]));
        assert_ne!(local_key(&["1:a".into(), "b".into()]), local_key(&["1".into(), "a1:b".into()]));
    }

    #[test]
    fn workload_keys() {
        let config = crate::RateLimitConfig::parse(
            br#"{"rules": [{"name": "k", "match": {"prefix": "/"}, "key": ["workload", "workload.namespace", "workload.service_account", "workload.trust_domain"], "limit": {"requests": 1, "per": "1s"}}]}"#,
        )
        .unwrap();
        let rule = &config.rules[0];
        let istio = Workload::parse("spiffe://mesh.test/ns/billing/sa/api").unwrap();
        let other = Workload::parse("spiffe://mesh.test/payments/worker").unwrap();
        let keys = |workload: Option<&Workload>| key_values(rule, Caller { workload, ..Caller::default() }, None, &|_| None);
        assert_eq!(keys(Some(&istio)), ["spiffe://mesh.test/ns/billing/sa/api", "mesh.test/ns/billing", "mesh.test/ns/billing/sa/api", "mesh.test"]);
        // The same names in another namespace or trust domain: other keys, other budgets.
        for elsewhere in ["spiffe://mesh.test/ns/orders/sa/api", "spiffe://partner.test/ns/billing/sa/api"] {
            let theirs = keys(Workload::parse(elsewhere).as_ref());
            assert_ne!(theirs[2], "mesh.test/ns/billing/sa/api", "{elsewhere}");
        }
        assert_ne!(keys(Workload::parse("spiffe://partner.test/ns/billing/sa/x").as_ref())[1], "mesh.test/ns/billing");
        assert_eq!(keys(Some(&other)), ["spiffe://mesh.test/payments/worker", "-", "-", "mesh.test"]);
        assert_eq!(keys(None), ["-", "-", "-", "-"], "no certificate: the one shared bucket");
        let refused = crate::RateLimitConfig::parse(
            br#"{"rules": [{"name": "k", "match": {"prefix": "/"}, "key": ["workload.ns"], "limit": {"requests": 1, "per": "1s"}}]}"#,
        );
        assert!(refused.unwrap_err().to_string().contains("\"workload.ns\" is not"));
        assert_eq!(rule.key.iter().map(KeyPart::descriptor_key).collect::<Vec<_>>(), ["workload", "workload.namespace", "workload.service_account", "workload.trust_domain"]);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:5000"), "::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
        assert_eq!(strip_port("::1"), "::1");
    }
}
