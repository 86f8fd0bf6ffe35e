//! The engine's configuration (YAML), parsed strictly: every limit a `scope: global` rule of a
//! rate-limit filter refers to, and where Redis is.

use std::collections::HashSet;

use meshward_core::config::{check_name, parse_duration};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    redis: Option<String>,
    #[serde(default)]
    limits: Vec<RawLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    domain: String,
    rule: String,
    key: Vec<String>,
    requests: u64,
    per: String,
}

/// One global limit: `requests` per fixed window of `window_secs`, counted per distinct value
/// of the rule's key parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// The rate-limit filter's `global.domain`.
    pub domain: String,
    /// The rule's name (the descriptor's `rule` entry).
    pub rule: String,
    /// The rule's key parts as the filter names its descriptor entries (`tenant`,
    /// `header.x-api-key`, `claim.org`, `subject`, `client_ip`).
    pub key: Vec<String>,
    pub requests: u64,
    pub window_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    pub redis: Option<String>,
    pub limits: Vec<LimitConfig>,
}

const KEY_PARTS: &[&str] =
    &["subject", "tenant", "client_ip", "workload", "workload.trust_domain", "workload.namespace", "workload.service_account"];

fn valid_key_part(part: &str) -> bool {
    KEY_PARTS.contains(&part)
        || part
            .strip_prefix("claim.")
            .or_else(|| part.strip_prefix("header."))
            .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
}

impl FleetConfig {
    pub fn parse(text: &str) -> Result<FleetConfig, String> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = HashSet::new();
        let mut limits = Vec::with_capacity(raw.limits.len());
        for (i, l) in raw.limits.into_iter().enumerate() {
            let at = |field: &str| format!("limits[{i}].{field}");
            check_name(&at("rule"), &l.rule).map_err(|e| e.to_string())?;
            if l.domain.trim().is_empty() {
                return Err(format!("{}: must not be empty", at("domain")));
            }
            if !seen.insert((l.domain.clone(), l.rule.clone())) {
                return Err(format!("{}: rule {:?} of domain {:?} is configured twice", at("rule"), l.rule, l.domain));
            }
            if l.key.is_empty() {
                return Err(format!("{}: name the rule's key parts, as its filter does", at("key")));
            }
            if let Some(bad) = l.key.iter().find(|k| !valid_key_part(k)) {
                return Err(format!("{}: {bad:?} is not subject, tenant, client_ip, workload[.namespace|.service_account|.trust_domain], claim.<name> or header.<name>", at("key")));
            }
            if l.requests == 0 {
                return Err(format!("{}: must be at least 1", at("requests")));
            }
            let per = parse_duration(&at("per"), &l.per).map_err(|e| e.to_string())?;
            if per.subsec_nanos() != 0 || per.as_secs() == 0 {
                return Err(format!("{}: global windows are whole seconds (\"1s\", \"60s\")", at("per")));
            }
            limits.push(LimitConfig { domain: l.domain, rule: l.rule, key: l.key, requests: l.requests, window_secs: per.as_secs() });
        }
        Ok(FleetConfig { redis: raw.redis, limits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_or_are_refused_with_the_field() {
        let ok = FleetConfig::parse(
            "redis: redis://127.0.0.1:6379\nlimits:\n  - {domain: orders, rule: per-tenant, key: [tenant, header.x-api-key], requests: 5, per: 60s}\n",
        )
        .unwrap();
        assert_eq!(ok.limits[0].window_secs, 60);
        assert_eq!(ok.limits[0].key, vec!["tenant", "header.x-api-key"]);
        for (text, expected) in [
            ("limits:\n  - {domain: d, rule: r, key: [tenant], requests: 0, per: 1s}", "limits[0].requests"),
            ("limits:\n  - {domain: d, rule: r, key: [tenant], requests: 1, per: 0.5s}", "limits[0].per"),
            ("limits:\n  - {domain: d, rule: r, key: [tenant], requests: 1, per: 1m}", "limits[0].per"),
            ("limits:\n  - {domain: d, rule: r, key: [], requests: 1, per: 1s}", "limits[0].key"),
            ("limits:\n  - {domain: d, rule: r, key: [user], requests: 1, per: 1s}", "limits[0].key"),
            ("limits:\n  - {domain: d, rule: 'a b', key: [tenant], requests: 1, per: 1s}", "limits[0].rule"),
            ("limits:\n  - {domain: '', rule: r, key: [tenant], requests: 1, per: 1s}", "limits[0].domain"),
            (
                "limits:\n  - {domain: d, rule: r, key: [tenant], requests: 1, per: 1s}\n  - {domain: d, rule: r, key: [tenant], requests: 2, per: 1s}",
                "limits[1].rule",
            ),
            ("limit: []", "unknown field"),
        ] {
            let error = FleetConfig::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
