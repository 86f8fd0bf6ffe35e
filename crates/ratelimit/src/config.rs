//! The rate-limit filter's configuration, parsed strictly and compiled once.

use std::time::Duration;

use meshward_core::fleet::FailureMode;
use meshward_core::config::{check_grpc_cluster, check_name, parse_duration, parse_json, ConfigError};
use meshward_core::route::{RawRouteMatch, RouteMatch};
use meshward_core::Mode;
use serde::Deserialize;

use crate::gcra::Limit;

const DEFAULT_MAX_KEYS: usize = 64 * 1024;
const DEFAULT_RLS_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    rules: Vec<RawRule>,
    global: Option<RawGlobal>,
    max_keys: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match")]
    match_: RawRouteMatch,
    applies_to: Option<AppliesTo>,
    key: Vec<String>,
    limit: Option<RawLimit>,
    cost: Option<u64>,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    counts: RawCounts,
    failure_statuses: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawCounts {
    #[default]
    Requests,
    Failures,
}

/// The statuses a `counts: failures` rule counts unless it names its own: refusals of the
/// caller's credentials or rights, whether meshward or the service answered them.
const DEFAULT_FAILURE_STATUSES: [u16; 2] = [401, 403];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: u64,
    per: String,
    burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    cluster: String,
    domain: String,
    timeout: Option<String>,
    /// Without an answer: let the request through and count
    /// `meshward_ratelimit_service_failures_total` (default), or refuse with 503
    /// `rate_limit_service_unavailable`.
    #[serde(default = "FailureMode::allow")]
    failure_mode: FailureMode,
}

/// Which requests a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    /// Requests with a verified principal.
    Authenticated,
    /// Requests without one (key them by client IP or API key).
    Unauthenticated,
    All,
}

/// Where a rule's budget is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this sidecar, shared by its worker threads.
    #[default]
    Local,
    /// In the rate-limit service (Envoy RLS v3), shared by every replica.
    Global,
}

/// What spends a rule's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counts {
    /// Every request the rule matches, when it arrives.
    Requests,
    /// Only requests answered with one of these statuses (brute force: failed logins, OTP or
    /// token guesses), counted when the answer leaves. Once the budget is spent, requests are
    /// refused (429) when they arrive, before any stage after this one (a signature check)
    /// runs.
    Failures(Vec<u16>),
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Subject,
    Tenant,
    Claim(String),
    Header(String),
    ClientIp,
    /// The calling workload's SPIFFE ID, or one part of it (a per-service quota).
    Workload(WorkloadPart),
}

/// Which part of the calling workload's identity a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadPart {
    SpiffeId,
    TrustDomain,
    Namespace,
    ServiceAccount,
}

impl WorkloadPart {
    const ALL: [(WorkloadPart, &'static str); 4] = [
        (WorkloadPart::SpiffeId, "workload"),
        (WorkloadPart::TrustDomain, "workload.trust_domain"),
        (WorkloadPart::Namespace, "workload.namespace"),
        (WorkloadPart::ServiceAccount, "workload.service_account"),
    ];

    pub fn name(self) -> &'static str {
        WorkloadPart::ALL.iter().find(|(p, _)| *p == self).map_or("workload", |(_, n)| n)
    }

    /// This part of a workload as a key value (`None`: a SPIFFE ID without an Istio-form path
    /// has no namespace or service account). A namespace is qualified by its trust domain
    /// (`cluster.local/ns/billing`) and a service account by both (`cluster.local/ns/billing/sa/api`):
    /// the same name in another namespace or trust domain is another caller, with its own budget.
    pub fn of(self, workload: &meshward_core::workload::Workload) -> Option<String> {
        let domain = &workload.trust_domain;
        match self {
            WorkloadPart::SpiffeId => Some(workload.spiffe_id.clone()),
            WorkloadPart::TrustDomain => Some(domain.clone()),
            WorkloadPart::Namespace => workload.namespace.as_ref().map(|ns| format!("{domain}/ns/{ns}")),
            WorkloadPart::ServiceAccount => {
                let (ns, sa) = (workload.namespace.as_ref()?, workload.service_account.as_ref()?);
                Some(format!("{domain}/ns/{ns}/sa/{sa}"))
            }
        }
    }
}

impl KeyPart {
    fn parse(text: &str) -> Option<KeyPart> {
        Some(match text {
            "subject" => KeyPart::Subject,
            "tenant" => KeyPart::Tenant,
            "client_ip" => KeyPart::ClientIp,
            _ if text.starts_with("workload") => KeyPart::Workload(WorkloadPart::ALL.iter().find(|(_, n)| *n == text)?.0),
            _ => match text.split_once(':')? {
                ("claim", name) if !name.is_empty() => KeyPart::Claim(name.to_string()),
                ("header", name) if !name.is_empty() => KeyPart::Header(name.to_ascii_lowercase()),
                _ => return None,
            },
        })
    }

    /// Needs a verified principal.
    pub fn from_principal(&self) -> bool {
        matches!(self, KeyPart::Subject | KeyPart::Tenant | KeyPart::Claim(_))
    }

    /// Its name in RLS descriptor entries.
    pub fn descriptor_key(&self) -> String {
        match self {
            KeyPart::Subject => "subject".into(),
            KeyPart::Tenant => "tenant".into(),
            KeyPart::Claim(n) => format!("claim.{n}"),
            KeyPart::Header(n) => format!("header.{n}"),
            KeyPart::ClientIp => "client_ip".into(),
            KeyPart::Workload(part) => part.name().into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub route: RouteMatch,
    pub applies_to: AppliesTo,
    pub key: Vec<KeyPart>,
    /// Required for local rules; for global rules the service decides.
    pub limit: Option<Limit>,
    pub cost: u64,
    pub scope: Scope,
    pub counts: Counts,
}

#[derive(Debug, Clone)]
pub struct Global {
    pub cluster: String,
    pub domain: String,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub mode: Mode,
    pub rules: Vec<Rule>,
    pub global: Option<Global>,
    pub max_keys: usize,
}

impl Rule {
    /// The statuses this rule counts when the answer leaves (`None`: it counts requests).
    pub fn failure_statuses(&self) -> Option<&[u16]> {
        match &self.counts {
            Counts::Failures(statuses) => Some(statuses),
            Counts::Requests => None,
        }
    }
}

impl RateLimitConfig {
    pub fn parse(json: &[u8]) -> Result<RateLimitConfig, ConfigError> {
        let raw: RawConfig = parse_json(json)?;
        if raw.rules.is_empty() {
            return Err(ConfigError::new("rules", "at least one rule is required"));
        }
        let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if !(16..=1 << 22).contains(&max_keys) {
            return Err(ConfigError::new("max_keys", "must be between 16 and 4194304"));
        }
        let global = match raw.global {
            None => None,
            Some(g) => {
                if g.cluster.trim().is_empty() || g.domain.trim().is_empty() {
                    return Err(ConfigError::new("global", "`cluster` and `domain` are required"));
                }
                check_grpc_cluster("global.cluster", &g.cluster)?;
                let timeout = match g.timeout {
                    Some(t) => parse_duration("global.timeout", &t)?,
                    None => DEFAULT_RLS_TIMEOUT,
                };
                if timeout.is_zero() {
                    return Err(ConfigError::new("global.timeout", "must be positive"));
                }
                Some(Global { cluster: g.cluster, domain: g.domain, timeout, failure_mode: g.failure_mode })
            }
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].{field}");
            check_name(&at("name"), &r.name)?;
            if rules.iter().any(|x| x.name == r.name) {
                return Err(ConfigError::new(at("name"), format!("{:?} is used twice", r.name)));
            }
            let route = RouteMatch::compile(r.match_).map_err(|e| ConfigError::new(at("match"), e))?;
            if r.key.is_empty() {
                return Err(ConfigError::new(at("key"), "name at least one key part (subject, tenant, claim:<name>, header:<name>, client_ip, workload[.namespace|.service_account|.trust_domain])"));
            }
            let key = r
                .key
                .iter()
                .map(|k| KeyPart::parse(k).ok_or_else(|| ConfigError::new(at("key"), format!("{k:?} is not subject, tenant, claim:<name>, header:<name>, client_ip or workload[.namespace|.service_account|.trust_domain]"))))
                .collect::<Result<Vec<_>, _>>()?;
            let needs_principal = key.iter().any(KeyPart::from_principal);
            let applies_to = r.applies_to.unwrap_or(if needs_principal { AppliesTo::Authenticated } else { AppliesTo::All });
            if needs_principal && applies_to != AppliesTo::Authenticated {
                return Err(ConfigError::new(at("applies_to"), "a key built from the principal only applies to authenticated requests"));
            }
            let cost = r.cost.unwrap_or(1);
            let limit = match r.limit {
                None if r.scope == Scope::Local => return Err(ConfigError::new(at("limit"), "is required for local rules")),
                None => None,
                Some(l) => {
                    let period = parse_duration(&at("limit.per"), &l.per)?;
                    let period_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
                    let burst = l.burst.unwrap_or(l.requests);
                    if l.requests == 0 || period_us < 1000 || burst == 0 {
                        return Err(ConfigError::new(at("limit"), "requests, burst and per must be positive (per ≥ 1ms)"));
                    }
                    if period_us / l.requests == 0 {
                        return Err(ConfigError::new(at("limit"), "more than one request per microsecond is not a limit"));
                    }
                    if cost > burst {
                        return Err(ConfigError::new(at("cost"), format!("{cost} exceeds the burst of {burst}: no request could ever pass")));
                    }
                    // The fleet engine counts fixed windows of whole seconds.
                    if r.scope == Scope::Global && (period_us % 1_000_000 != 0 || burst != l.requests) {
                        return Err(ConfigError::new(at("limit"), "a global limit is `requests` per whole seconds (\"60s\"), without `burst`"));
                    }
                    Some(Limit { requests: l.requests, period_us, burst })
                }
            };
            if cost == 0 || cost > u64::from(u32::MAX) {
                return Err(ConfigError::new(at("cost"), "must be at least 1"));
            }
            if r.scope == Scope::Global && global.is_none() {
                return Err(ConfigError::new(at("scope"), "a global rule needs the `global` service settings"));
            }
            let counts = match (r.counts, r.failure_statuses) {
                (RawCounts::Requests, None) => Counts::Requests,
                (RawCounts::Requests, Some(_)) => {
                    return Err(ConfigError::new(at("failure_statuses"), "only a rule with `counts: failures` counts statuses"));
                }
                (RawCounts::Failures, _) if r.scope == Scope::Global => {
                    // The rate-limit service counts when asked; it has no "would this pass" question.
                    return Err(ConfigError::new(at("counts"), "failures are counted in this sidecar only (`scope: local`)"));
                }
                (RawCounts::Failures, statuses) => {
                    let statuses = statuses.unwrap_or_else(|| DEFAULT_FAILURE_STATUSES.to_vec());
                    if statuses.is_empty() {
                        return Err(ConfigError::new(at("failure_statuses"), "name at least one status"));
                    }
                    if let Some(bad) = statuses.iter().find(|s| !(400..=599).contains(*s) || **s == 429) {
                        return Err(ConfigError::new(
                            at("failure_statuses"),
                            format!("{bad} is not a failure to count (400-599, not this filter's own 429)"),
                        ));
                    }
                    Counts::Failures(statuses)
                }
            };
            rules.push(Rule { name: r.name, route, applies_to, key, limit, cost, scope: r.scope, counts });
        }
        Ok(RateLimitConfig { mode: raw.mode, rules, global, max_keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(extra: &str) -> String {
        format!(r#"{{"rules": [{{"name": "r", "match": {{"prefix": "/"}}, "key": ["client_ip"], "limit": {{"requests": 3, "per": "60s"}}{extra}}}]}}"#)
    }

    #[test]
    fn failure_counting_rules() {
        let counts = |extra: &str| RateLimitConfig::parse(rule(extra).as_bytes()).map(|c| c.rules[0].counts.clone());
        assert_eq!(counts(""), Ok(Counts::Requests));
        assert_eq!(counts(r#", "counts": "failures""#), Ok(Counts::Failures(vec![401, 403])));
        assert_eq!(counts(r#", "counts": "failures", "failure_statuses": [422]"#), Ok(Counts::Failures(vec![422])));
        // (extra fields, the error's field, a piece of its message)
        let refused = [
            (r#", "failure_statuses": [401]"#, "rules[0].failure_statuses", "only a rule with `counts: failures`"),
            (r#", "counts": "failures", "failure_statuses": []"#, "rules[0].failure_statuses", "at least one"),
            (r#", "counts": "failures", "failure_statuses": [200]"#, "rules[0].failure_statuses", "200 is not a failure"),
            (r#", "counts": "failures", "failure_statuses": [429]"#, "rules[0].failure_statuses", "429 is not a failure"),
            (r#", "counts": "errors""#, "rules[0].counts", "unknown variant"),
        ];
        for (extra, field, message) in refused {
            let err = RateLimitConfig::parse(rule(extra).as_bytes()).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(message), "{extra}: {err}");
        }
        let global = r#"{"global": {"cluster": "rls", "domain": "d"}, "rules": [{"name": "r", "match": {"prefix": "/"}, "key": ["client_ip"], "scope": "global", "counts": "failures"}]}"#;
        let err = RateLimitConfig::parse(global.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("rules[0].counts") && err.contains("in this sidecar only"), "{err}");
    }
}
