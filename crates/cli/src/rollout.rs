//! `meshward rollout status|promote`: is each stage of a service's policy ready to enforce, or,
//! where it enforces, still within its budget? Read from a real Prometheus scraping the
//! sidecars' `/stats/prometheus`: per stage with a budget, the share of its decisions that were
//! denials (shadow or enforced) over the policy's window, with the top reasons and routes.
//!
//! The series are the runtime's decision counters, `meshward_<stage>_{allowed,denied,
//! shadow_denied}_total{route,reason}`, selected by the policy's `selector` labels (as
//! Prometheus' Kubernetes pod discovery keeps them on every series it scrapes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use meshward_schema::drift::label_shape;

use crate::policy::{is_json, parse_text, Policy};
use crate::render::{module_configurations, to_yaml};
use meshward_core::config::fingerprint;

/// What one stage's numbers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Within budget.
    Ready,
    /// Over budget in shadow: not ready to enforce.
    OverBudget,
    /// Over budget while enforcing: stop the line, roll back.
    StopTheLine,
    /// No decision in the window: nothing to judge the stage by.
    NoTraffic,
    /// Within budget in shadow, but not in shadow for the policy's `min_shadow` yet.
    ShadowTooShort,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub stage: String,
    pub mode: String,
    pub decisions: f64,
    pub denials: f64,
    pub rate: f64,
    pub budget: f64,
    pub verdict: Verdict,
    /// For a shadow stage under `min_shadow`: for how long (seconds) it has reported decisions.
    pub shadow_secs: Option<f64>,
    /// The largest reasons and routes among the denials, with their counts.
    pub top_reasons: Vec<(String, f64)>,
    pub top_routes: Vec<(String, f64)>,
}

/// What one proxy (a scrape `instance`) reports running.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub instance: String,
    /// Every configuration it reports is one this policy renders to.
    pub current: bool,
    /// (module, configuration fingerprint), as its `meshward[_<stage>]_config_info` gauges say.
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub service: String,
    pub window_secs: u64,
    pub min_shadow_secs: Option<u64>,
    pub stages: Vec<StageStatus>,
    pub ready: bool,
    /// Each proxy reporting a configuration, and whether it runs this policy's.
    pub proxies: Vec<ProxyStatus>,
    /// The policy before the last `promote --apply` (`<policy>.previous`), when there is one:
    /// what a stage that stops the line rolls back to.
    pub rollback: Option<PathBuf>,
}

/// One sample of an instant vector: its labels and value.
type Sample = (serde_json::Map<String, Value>, f64);

/// A PromQL instant-query client (plain HTTP, as Prometheus serves inside a cluster).
pub struct Prometheus {
    base: String,
    agent: ureq::Agent,
}

impl Prometheus {
    pub fn new(base: &str) -> Prometheus {
        let config = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).http_status_as_error(false).build();
        Prometheus { base: base.trim_end_matches('/').to_string(), agent: config.into() }
    }

    /// The samples of an instant vector: (labels, value).
    pub(crate) fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let url = format!("{}/api/v1/query", self.base);
        let mut response = self.agent.get(&url).query("query", promql).call().map_err(|e| format!("Prometheus at {}: {e}", self.base))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(|e| format!("Prometheus at {}: {e}", self.base))?;
        let body: Value = serde_json::from_str(&text).map_err(|_| format!("Prometheus at {} answered {status} with no JSON", self.base))?;
        if body["status"] != "success" {
            return Err(format!("Prometheus refused `{promql}`: {}", body["error"].as_str().unwrap_or("no reason given")));
        }
        let samples = body["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(samples
            .into_iter()
            .filter_map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((labels, value))
            })
            .collect())
    }

    fn scalar(&self, promql: &str) -> Result<f64, String> {
        Ok(self.query(promql)?.first().map(|(_, v)| *v).unwrap_or(0.0))
    }

    /// The samples above zero of an aggregation `by (label)`: (the label's value, if the series
    /// has one; the value).
    pub(crate) fn by_label(&self, promql: &str, label: &str) -> Result<Vec<(Option<String>, f64)>, String> {
        Ok(self
            .query(promql)?
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(labels, v)| (labels.get(label).and_then(Value::as_str).map(str::to_string), v))
            .collect())
    }
}

/// PromQL for how many seconds ago `expr` first had a sample within the last `lookback_secs`,
/// read at `step` seconds (at most 300 steps): (query, step).
pub(crate) fn first_sample_age(expr: &str, lookback_secs: u64) -> (String, u64) {
    let step = (lookback_secs / 300).max(1);
    (format!("time() - min_over_time(timestamp({expr})[{lookback_secs}s:{step}s])"), step)
}

/// `{a="x",b="y"}` for the policy's selector (values escaped), joined with `extra`.
pub(crate) fn matchers(policy: &Policy, extra: &str) -> String {
    let mut parts: Vec<String> =
        policy.selector.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    parts.push(extra.to_string());
    format!("{{{}}}", parts.join(","))
}

/// PromQL for how much each counter series of `selector` grew within the last `window_secs`:
/// its value now less its value at the window's start. Unlike `increase()`:
/// - a series born within the window counts from zero: a counter is created by the request
///   that first increments it, so its first sample is not 0, and what it counted before the
///   first scrape (a new denial reason's first burst) would be missed;
/// - series keep their name (as `name`), so `denied` and `shadow_denied` with the same labels
///   (a stage promoted on a running Envoy) stay two series instead of an error.
///
/// A counter that went back (its Envoy restarted) counts from the restart.
pub(crate) fn growth(selector: &str, window_secs: u64) -> String {
    let named = |s: &str| format!("label_replace({s}, \"name\", \"$1\", \"__name__\", \"(.+)\")");
    let now = named(selector);
    let before = named(&format!("{selector} offset {window_secs}s"));
    format!("((({now} - {before}) >= 0) or {now})")
}

fn top(prometheus: &Prometheus, by: &str, denials: &str) -> Result<Vec<(String, f64)>, String> {
    let mut rows: Vec<(String, f64)> = prometheus
        .by_label(&format!("topk(3, sum by ({by}) ({denials}))"), by)?
        .into_iter()
        .map(|(label, v)| {
            let label = label.unwrap_or_else(|| "-".to_string());
            // A route outside the contract is labelled with its shape's spelling: read it back.
            (label_shape(&label).unwrap_or(label), v)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(rows)
}

/// Each budgeted stage's numbers over `window_secs` (the policy's unless overridden).
pub fn status(policy: &Policy, prometheus: &Prometheus, window_secs: Option<u64>) -> Result<Status, String> {
    let rollout = policy.rollout.as_ref().ok_or_else(|| "the policy has no `rollout` section (budgets per stage)".to_string())?;
    let window = window_secs.unwrap_or(rollout.window_secs);
    let mut stages = Vec::new();
    for (stage, budget) in &rollout.budgets {
        let series = |decisions: &str| matchers(policy, &format!("__name__=~\"meshward_{stage}_({decisions})_total\""));
        let all = growth(&series("allowed|denied|shadow_denied"), window);
        let denied = growth(&series("denied|shadow_denied"), window);
        let decisions = prometheus.scalar(&format!("sum({all})"))?;
        let denials = prometheus.scalar(&format!("sum({denied})"))?;
        let mode = policy.stage(stage).and_then(|s| s.config.get("mode")).and_then(Value::as_str).unwrap_or("enforce").to_string();
        let rate = if decisions > 0.0 { denials / decisions } else { 0.0 };
        let mut verdict = match (decisions > 0.0, rate <= *budget, mode == "shadow") {
            (false, _, _) => Verdict::NoTraffic,
            (true, true, _) => Verdict::Ready,
            (true, false, true) => Verdict::OverBudget,
            (true, false, false) => Verdict::StopTheLine,
        };
        let mut shadow_secs = None;
        if let (Verdict::Ready, true, Some(min)) = (verdict, mode == "shadow", rollout.min_shadow_secs) {
            // The earliest moment within `min` the stage reported decisions; the policy's mode
            // says it has been shadow since.
            let (age, step) = first_sample_age(&format!("sum({})", series("allowed|denied|shadow_denied")), min);
            let secs = prometheus.scalar(&age)?;
            if secs + (step as f64) < (min as f64) {
                verdict = Verdict::ShadowTooShort;
            }
            shadow_secs = Some(secs);
        }
        let (top_reasons, top_routes) =
            if verdict == Verdict::Ready || verdict == Verdict::NoTraffic { (vec![], vec![]) } else { (top(prometheus, "reason", &denied)?, top(prometheus, "route", &denied)?) };
        stages.push(StageStatus { stage: stage.clone(), mode, decisions, denials, rate, budget: *budget, verdict, shadow_secs, top_reasons, top_routes });
    }
    let ready = stages.iter().all(|s| s.verdict == Verdict::Ready);
    let proxies = proxies(policy, prometheus)?;
    let rollback = Some(previous_path(&policy.path)).filter(|p| p.exists());
    Ok(Status { service: policy.service.clone(), window_secs: window, min_shadow_secs: rollout.min_shadow_secs, stages, ready, proxies, rollback })
}

/// The proxies of the service by what configuration they report (each module publishes
/// `<module>_config_info{config="<fingerprint>"} 1` for the configuration it runs), each
/// compared with the configurations this policy renders to.
fn proxies(policy: &Policy, prometheus: &Prometheus) -> Result<Vec<ProxyStatus>, String> {
    let expected: Vec<(String, String)> =
        module_configurations(policy)?.into_iter().map(|(module, config)| (module, fingerprint(config.as_bytes()))).collect();
    let mut proxies: Vec<ProxyStatus> = Vec::new();
    for (labels, value) in prometheus.query(&matchers(policy, "__name__=~\"meshward(_[a-z]+)?_config_info\""))? {
        let label = |name: &str| labels.get(name).and_then(Value::as_str).unwrap_or("").to_string();
        let (instance, module) = (label("instance"), label("__name__").trim_end_matches("_config_info").to_string());
        if value <= 0.0 {
            continue;
        }
        let config = (module, label("config"));
        match proxies.iter_mut().find(|p| p.instance == instance) {
            Some(proxy) => proxy.configs.push(config),
            None => proxies.push(ProxyStatus { instance, current: false, configs: vec![config] }),
        }
    }
    for proxy in &mut proxies {
        proxy.configs.sort();
        proxy.current = proxy.configs.iter().all(|c| expected.contains(c));
    }
    proxies.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(proxies)
}

fn listed(rows: &[(String, f64)]) -> String {
    rows.iter().map(|(name, n)| format!("{name} {n:.0}")).collect::<Vec<_>>().join(", ")
}

pub fn render_text(status: &Status) -> String {
    let mut out = format!("{} over the last {}s:\n", status.service, status.window_secs);
    for s in &status.stages {
        let numbers = format!("{:.3}% of {:.0} decisions denied (budget {:.3}%)", s.rate * 100.0, s.decisions, s.budget * 100.0);
        let verdict = match s.verdict {
            Verdict::Ready => "within budget".to_string(),
            Verdict::NoTraffic => "no decisions in the window: nothing to judge it by".to_string(),
            Verdict::ShadowTooShort => format!(
                "within budget, but SHADOW TOO SHORT: reporting decisions for {:.0}s of the {}s min_shadow",
                s.shadow_secs.unwrap_or(0.0),
                status.min_shadow_secs.unwrap_or(0)
            ),
            Verdict::OverBudget => format!("OVER BUDGET: reasons {}; routes {}", listed(&s.top_reasons), listed(&s.top_routes)),
            Verdict::StopTheLine => format!(
                "STOP THE LINE: enforcing and over budget (reasons {}; routes {}); roll back to {}, or set this stage to mode: shadow",
                listed(&s.top_reasons),
                listed(&s.top_routes),
                status.rollback.as_ref().map_or("the previous policy version".to_string(), |p| format!("{} (the policy before its promotion)", p.display()))
            ),
        };
        out.push_str(&format!("  {:<10} {:<8} {numbers}: {verdict}\n", s.stage, s.mode));
    }
    let current = status.proxies.iter().filter(|p| p.current).count();
    if status.proxies.is_empty() {
        out.push_str("  proxies: none reports which configuration it runs\n");
    } else {
        out.push_str(&format!("  proxies: {current} of {} run this policy\n", status.proxies.len()));
    }
    for proxy in status.proxies.iter().filter(|p| !p.current) {
        let configs: Vec<String> = proxy.configs.iter().map(|(module, config)| format!("{module} {config}")).collect();
        out.push_str(&format!("    {} runs another configuration: {}\n", proxy.instance, configs.join(", ")));
    }
    out.push_str(if status.ready { "ready: every stage is within its budget\n" } else { "not ready\n" });
    out
}

/// The policy with every shadow stage set to enforce: what `promote` renders once ready.
pub fn enforcing(policy: &Policy) -> Policy {
    let mut promoted = policy.clone();
    for stage in &mut promoted.stages {
        if stage.config.get("mode").and_then(Value::as_str) == Some("shadow") {
            stage.config["mode"] = Value::String("enforce".into());
        }
    }
    promoted
}

/// `<file><suffix>` beside `file`.
fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    file.with_file_name(name)
}

/// Where `promote --apply` keeps the policy it replaces: `<policy>.previous`.
pub fn previous_path(policy: &Path) -> PathBuf {
    beside(policy, ".previous")
}

/// Promotes in place: the policy file (what `meshward serve` watches and pushes) becomes the
/// policy with every shadow stage enforcing; the file it replaces is kept as
/// [`previous_path`], the version to roll back to. The new file is read back and must load as
/// exactly the enforcing policy before it replaces the old one, by rename (never half-written).
/// The file is written anew from its parsed form: comments stay in the previous file only.
pub fn apply(policy: &Policy) -> Result<PathBuf, String> {
    let path = &policy.path;
    let mut document = parse_text(path, &policy.text).map_err(|e| e.to_string())?;
    let stages = document.get_mut("stages").and_then(Value::as_array_mut).ok_or_else(|| format!("{}: no stages", path.display()))?;
    for config in stages.iter_mut().filter_map(Value::as_object_mut).flat_map(|stage| stage.values_mut()) {
        if config.get("mode").and_then(Value::as_str) == Some("shadow") {
            config["mode"] = Value::String("enforce".into());
        }
    }
    let previous = previous_path(path);
    let text = if is_json(path, &policy.text) {
        serde_json::to_string_pretty(&document).map_err(|e| e.to_string())? + "\n"
    } else {
        let name = previous.file_name().unwrap_or_default().to_string_lossy();
        format!("# Promoted to enforce by `meshward rollout promote --apply`; the policy before: {name}\n{}", to_yaml(&document))
    };
    let staging = beside(path, ".promoting");
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::write(&staging, &text).map_err(|e| io(&staging, e))?;
    let contract = policy.contract.as_ref().map(|c| c.path.as_path());
    let promoted = Policy::load(&staging, contract).map_err(|e| e.to_string());
    let expected = enforcing(policy);
    let same = promoted.as_ref().is_ok_and(|p| {
        p.stages.len() == expected.stages.len() && p.stages.iter().zip(&expected.stages).all(|(a, b)| a.kind == b.kind && a.config == b.config)
    });
    if !same {
        let _ = std::fs::remove_file(&staging);
        let why = promoted.err().unwrap_or_else(|| "its stages differ".into());
        return Err(format!("{}: the promoted policy did not read back as the enforcing policy ({why}); nothing was changed", path.display()));
    }
    std::fs::write(&previous, &policy.text).map_err(|e| io(&previous, e))?;
    std::fs::rename(&staging, path).map_err(|e| io(path, e))?;
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn promotion_in_place_keeps_the_previous_policy() {
        let dir = std::env::temp_dir().join(format!("meshward-promote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = "[{name: r, match: {prefix: /}, public: true}]";
        for (name, text) in [
            ("policy.yaml", format!("# reviewed\nservice: orders\nstages:\n  - ownership: {{mode: shadow, rules: {rules}}}\n  - ratelimit: {{mode: enforce, rules: []}}\n")),
            ("policy.json", r#"{"service": "orders", "stages": [{"ownership": {"mode": "shadow", "unmatched": "allow", "rules": []}}]}"#.to_string()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, &text).unwrap();
            let policy = Policy::load(&path, None).unwrap();
            let previous = apply(&policy).unwrap();
            assert_eq!(previous, dir.join(format!("{name}.previous")));
            assert_eq!(std::fs::read_to_string(&previous).unwrap(), text, "the old file, comments and all");
            let promoted = Policy::load(&path, None).unwrap();
            assert!(promoted.stages.iter().all(|s| s.config["mode"] == "enforce"), "{name}: {}", promoted.text);
            assert!(!dir.join(format!("{name}.promoting")).exists());
        }
    }

    #[test]
    fn selector_labels_become_escaped_matchers() {
        let dir = std::env::temp_dir().join(format!("meshward-rollout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.yaml");
        std::fs::write(
            &path,
            "service: orders\nselector: {app: orders, tier: 'a\"b'}\nstages:\n  - ownership: {mode: shadow, rules: [{name: r, match: {prefix: /}, public: true}]}\nrollout: {budgets: {ownership: 0.5%}}\n",
        )
        .unwrap();
        let policy = Policy::load(Path::new(&path), None).unwrap();
        assert_eq!(matchers(&policy, "x=\"1\""), "{app=\"orders\",tier=\"a\\\"b\",x=\"1\"}");
        assert_eq!(policy.rollout.as_ref().unwrap().budgets, vec![("ownership".to_string(), 0.005)]);
        assert_eq!(enforcing(&policy).stages[0].config["mode"], "enforce");
        for (rollout, error) in [
            ("{budgets: {}}", "rollout.budgets: name at least one"),
            ("{budgets: {ownership: '0.5'}}", "rollout.budgets.ownership: \"0.5\" is not a percentage"),
            ("{budgets: {ownership: 101%}}", "is not a percentage"),
            ("{budgets: {schema: 1%}}", "rollout.budgets.schema: the policy has no `schema` stage"),
            ("{window: 10s, budgets: {ownership: 1%}}", "rollout.window"),
            ("{min_shadow: 1.5s, budgets: {ownership: 1%}}", "rollout.min_shadow: \"1.5s\" must be whole seconds"),
            ("{min_shadow: a week, budgets: {ownership: 1%}}", "rollout.min_shadow: `a week` is not a duration"),
            ("{window: an hour, budgets: {ownership: 1%}}", "rollout.window: `an hour` is not a duration"),
        ] {
            std::fs::write(&path, format!("service: orders\nstages:\n  - ownership: {{rules: []}}\nrollout: {rollout}\n")).unwrap();
            let e = Policy::load(Path::new(&path), None).unwrap_err().message;
            assert!(e.contains(error), "{rollout}: {e}");
        }
    }
}
