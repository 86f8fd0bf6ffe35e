//! The audit record of one request, made when the request ends (proxy-wasm `on_log`, where
//! the status and the duration are known) and sealed into this VM's chain
//! ([`meshward_core::audit`]).
//!
//! What a record holds: time, `request_id`, W3C `traceparent`, the calling `workload`, the
//! user's `subject` / `tenant` / `issuer`, the `actor` acting for the user (`act.sub`, else
//! `azp`), method, canonical path, the object ids the rules read (path
//! parameters), each stage's rule, decision and reason, status, latency and the policy's fingerprint.
//! Never in it: tokens or any header value but `traceparent`, the query string, bodies (so no
//! field a contract tags `x-data-class` either).

use meshward_core::audit::signing::Signer;
use meshward_core::audit::{rfc3339, seal, AuditConfig, AUDIT_PROPERTY};
use meshward_core::config::ConfigError;
use meshward_core::principal::current_principal;
use meshward_core::workload::current_workload;
use meshward_core::RequestState;
use meshward_host::{Host, LogLevel};
use serde_json::{json, Map, Value};

use crate::filter::Outcome;

/// Shared-data key numbering this proxy's producers (one per VM).
const PRODUCERS_KEY: &str = "meshward_audit.producers";

/// A module's audit settings, the fingerprint of the configuration it runs, and the key its
/// records are signed with (`audit.signing`).
#[derive(Debug)]
pub struct Audit {
    pub config: AuditConfig,
    pub policy: String,
    pub signer: Option<Signer>,
}

impl Audit {
    /// The settings with their signing key read (from the VM's environment where they say so).
    pub fn new(config: AuditConfig, policy: String, env: &dyn Fn(&str) -> Option<String>) -> Result<Audit, ConfigError> {
        let signer = config.signing.as_ref().map(|s| s.signer(env)).transpose().map_err(|e| ConfigError::new(format!("audit.{}", e.path), e.message))?;
        Ok(Audit { config, policy, signer })
    }
}

/// One stage as the record shows it: its name, the rule it matched, what it decided.
pub struct StageRecord<'a> {
    pub stage: &'static str,
    pub rule: Option<&'a str>,
    pub outcome: Outcome,
}

/// Makes, seals and hands the record of a finished request to the access log (filter state).
pub fn write(host: &mut dyn Host, audit: &Audit, request: &mut RequestState, stages: &[StageRecord<'_>]) {
    if !audit.config.covers(&request.method) {
        return;
    }
    let unix_ms = host.now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let record = record(host, &audit.policy, request, stages, unix_ms);
    let line = seal(record, || producer(host), audit.signer.as_ref(), unix_ms);
    if host.set_property(&[AUDIT_PROPERTY], line.as_bytes()).is_err() {
        host.log(LogLevel::Error, "meshward: the audit record could not be handed to the access log");
    }
}

/// The record, before its chain fields.
fn record(host: &dyn Host, policy: &str, request: &mut RequestState, stages: &[StageRecord<'_>], unix_ms: u64) -> Map<String, Value> {
    let number = |path: &[&str]| -> Option<i64> {
        let bytes: [u8; 8] = host.property(path)?.try_into().ok()?;
        Some(i64::from_le_bytes(bytes))
    };
    let principal = current_principal(host, &mut request.principal);
    let workload = current_workload(host, request);
    let actor = principal.as_ref().and_then(|p| {
        p.claim("act.sub").or_else(|| p.claim("azp")).and_then(Value::as_str).map(str::to_string)
    });
    let objects: Map<String, Value> = request.objects.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let stages: Vec<Value> = stages
        .iter()
        .map(|s| {
            let (decision, reason) = match s.outcome {
                Outcome::NotReached => ("not_reached", None),
                Outcome::Allowed => ("allowed", None),
                Outcome::Denied(r) => ("denied", Some(r)),
                Outcome::ShadowDenied(r) => ("shadow_denied", Some(r)),
            };
            json!({"stage": s.stage, "rule": s.rule, "decision": decision, "reason": reason})
        })
        .collect();
    let path = if request.refusal.is_some() { "<invalid>" } else { request.canonical.as_str() };
    let record = json!({
        "time": rfc3339(unix_ms),
        "request_id": request.request_id,
        "traceparent": request.header("traceparent").filter(|t| is_traceparent(t)),
        "workload": workload.as_ref().map(|w| w.spiffe_id.clone()),
        "subject": principal.as_ref().and_then(|p| p.subject.clone()),
        "tenant": principal.as_ref().and_then(|p| p.tenant.clone()),
        "issuer": principal.as_ref().map(|p| p.issuer.clone()),
        "actor": actor,
        "method": request.method,
        "path": path,
        "objects": objects,
        "stages": stages,
        "status": number(&["response", "code"]),
        "latency_us": number(&["request", "duration"]).map(|ns| ns / 1000),
        "policy": policy,
    });
    match record {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A W3C trace context `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); anything else is left
/// out rather than copied from the caller into the record.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    matches!(parts.as_slice(), [v, t, p, f] if hex(v, 2) && hex(t, 32) && hex(p, 16) && hex(f, 2))
}

/// This VM's producer name: the proxy's node id, when its first record was made, and its
/// number among the proxy's VMs (shared data, compare-and-swap), so two workers never share a
/// chain.
fn producer(host: &mut dyn Host) -> String {
    let node = host.property(&["xds", "node", "id"]).and_then(|b| String::from_utf8(b).ok()).filter(|n| !n.is_empty());
    let since = host.now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let mut number = 0u64;
    for _ in 0..16 {
        let (value, cas) = host.shared_data(PRODUCERS_KEY);
        number = value.and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) + 1;
        if host.set_shared_data(PRODUCERS_KEY, &number.to_le_bytes(), cas).is_ok() {
            break;
        }
    }
    format!("{}/{since}-{number}", node.as_deref().unwrap_or("envoy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents() {
        assert!(is_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        for bad in ["", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "00-x-y-z", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\",\"status\":200"] {
            assert!(!is_traceparent(bad), "{bad}");
        }
    }
}
