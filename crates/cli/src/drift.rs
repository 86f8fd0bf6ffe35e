//! `meshward drift`: where traffic and the contract disagree, per service, read from the same
//! Prometheus as `rollout status`.
//!
//! - **Routes seen but not in the contract**: the schema stage counts a request it has no
//!   operation for under the route's shape (`GET /admin/users/{id}`, at most
//!   [`meshward_schema::drift::MAX_SHAPES`] per sidecar, the rest as `other routes`) with the
//!   reason `unknown_route` or `method_not_allowed`; with how many requests in the window and
//!   how long ago the route was first seen (the first sample of its series within the window);
//!   counted as `rollout status` counts ([`growth`]).
//! - **Contract operations not seen**: operations with no schema decision in the window.

use serde::Serialize;
use meshward_schema::drift::{label_shape, route_label, OTHER_ROUTES};
use meshward_schema::SchemaConfig;

use crate::policy::Policy;
use crate::rollout::{first_sample_age, growth, matchers, Prometheus};

#[derive(Debug, Clone, Serialize)]
pub struct UnknownRoute {
    /// Its shape, `METHOD /literal/{id}`, or `other routes` past the sidecars' label limit.
    pub route: String,
    /// The `route` label it is counted under.
    pub label: String,
    /// Requests in the window.
    pub requests: f64,
    /// Seconds since its first sample within the window.
    pub first_seen_secs_ago: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnseenOperation {
    /// The metric label: the operation id, as the schema stage writes it.
    pub operation: String,
    pub method: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub service: String,
    pub window_secs: u64,
    /// Most requests first.
    pub unknown_routes: Vec<UnknownRoute>,
    /// In the contract's order.
    pub unseen_operations: Vec<UnseenOperation>,
}

/// The schema stage's contract: its operations as the module reads them.
fn contract(policy: &Policy) -> Result<SchemaConfig, String> {
    let stage = policy.stage("schema").ok_or_else(|| "drift: the policy has no `schema` stage (its contract is what traffic is compared with)".to_string())?;
    let bytes = serde_json::to_vec(&stage.config).map_err(|e| e.to_string())?;
    SchemaConfig::parse(&bytes).map_err(|e| format!("schema stage: {e}"))
}

/// `{route: value}` of a `sum by (route)` query, values above zero, series with a route.
fn by_route(prometheus: &Prometheus, promql: &str) -> Result<Vec<(String, f64)>, String> {
    Ok(prometheus.by_label(promql, "route")?.into_iter().filter_map(|(route, v)| Some((route?, v))).collect())
}

pub fn drift(policy: &Policy, prometheus: &Prometheus, window_secs: u64) -> Result<Drift, String> {
    let contract = contract(policy)?;
    let w = window_secs;
    let series = |decisions: &str, extra: &str| matchers(policy, &format!("__name__=~\"meshward_schema_({decisions})_total\"{extra}"));
    let outside = series("denied|shadow_denied", ",reason=~\"unknown_route|method_not_allowed\"");
    let mut unknown_routes = Vec::new();
    // Each route's first sample within the window.
    let first_seen = by_route(prometheus, &first_sample_age(&format!("sum by (route) ({outside})"), w).0)?;
    for (label, requests) in by_route(prometheus, &format!("sum by (route) ({})", growth(&outside, w)))? {
        let first_seen_secs_ago = first_seen.iter().find(|(l, _)| *l == label).map_or(0.0, |(_, s)| *s);
        let route = match label_shape(&label) {
            Some(shape) => shape,
            None if label == OTHER_ROUTES => "other routes".to_string(),
            None => label.clone(),
        };
        unknown_routes.push(UnknownRoute { route, label, requests, first_seen_secs_ago });
    }
    unknown_routes.sort_by(|a, b| b.requests.total_cmp(&a.requests).then_with(|| a.route.cmp(&b.route)));
    let seen = by_route(prometheus, &format!("sum by (route) ({})", growth(&series("allowed|denied|shadow_denied", ""), w)))?;
    let unseen_operations = contract
        .operations
        .iter()
        .map(|op| UnseenOperation { operation: route_label(&op.id), method: op.method.clone(), path: op.template.to_string() })
        .filter(|op| !seen.iter().any(|(route, _)| *route == op.operation))
        .collect();
    Ok(Drift { service: policy.service.clone(), window_secs, unknown_routes, unseen_operations })
}

pub fn render_text(drift: &Drift) -> String {
    let mut out = format!("{} over the last {}s:\n", drift.service, drift.window_secs);
    out.push_str(&format!("  routes seen but not in the contract: {}\n", drift.unknown_routes.len()));
    for r in &drift.unknown_routes {
        out.push_str(&format!("    {:<40} {:>8.0} requests, first seen {:.0}s ago\n", r.route, r.requests, r.first_seen_secs_ago));
    }
    out.push_str(&format!("  contract operations not seen: {}\n", drift.unseen_operations.len()));
    for op in &drift.unseen_operations {
        out.push_str(&format!("    {:<40} {} {}\n", op.operation, op.method, op.path));
    }
    out
}

