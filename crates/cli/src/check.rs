//! `meshward check`: the holes a policy leaves in its contract. Each [`Code`] is one kind of
//! hole; every finding names the file and line it is about where there is one.

use meshward_core::route::{canonical_path, PathMatch, RawRouteMatch, RouteMatch};
use meshward_ratelimit::config::KeyPart;
use meshward_schema::config::METHODS;
use serde::Serialize;
use serde_json::Value;

use crate::compile::{compile_stage, StageError};
use crate::policy::{line_of, Contract, Policy, Stage};

const WRITES: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One kind of hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The stage's own module would refuse this configuration.
    InvalidStage,
    /// A secret the stage reads is not in this environment; the stage was not compiled.
    SecretUnavailable,
    /// A JWT provider accepts tokens minted for any audience.
    ProviderWithoutAudience,
    /// The contract declares no security requirement and the policy does not list it `public`.
    NoSecurityRequirement,
    /// `public` names an operationId the contract does not have.
    UnknownPublicOperation,
    /// The contract requires credentials; the JWT stage lets the operation through without.
    TokenNotRequired,
    /// No JWT rule covers the operation: the JWT filter would refuse every call to it.
    OperationNotCovered,
    /// A write operation no ownership rule authorizes.
    WriteWithoutOwnership,
    /// A write operation no rate limit covers.
    WriteWithoutRateLimit,
    /// A rule that matches no operation of the contract.
    RouteNotInContract,
    /// An Envoy HTTP connection manager that does not normalise paths: Envoy would route, and
    /// the service receive, a path other than the one meshward decided on.
    PathNotNormalized,
    /// A generic webhook scheme whose delivery id (or timestamp) the signature does not cover:
    /// replays are keyed on the signed content alone.
    ReplayKeyNotSigned,
    /// An idempotency operation that matches reads (no `methods`, or GET / HEAD / OPTIONS):
    /// every read there would need a key, and reads are idempotent already.
    IdempotencyCoversReads,
    /// A rate-limit rule counting 401s by client or header, in a stage after `jwt`: the JWT
    /// stage's refusals never reach it, and a guessing client is refused only after its
    /// signature check.
    FailureLimitAfterJwt,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub file: String,
    pub line: Option<usize>,
}

/// An operation of the contract.
struct Operation {
    id: String,
    method: String,
    template: String,
    /// The template with each parameter replaced by a sample segment, canonicalized.
    sample: String,
    secured: bool,
    line: Option<usize>,
}

/// A rule of a stage, as far as routes go.
struct RouteRule {
    stage: String,
    label: String,
    route: Route,
    public: bool,
    /// A rate-limit rule that spends its budget on failures only (`counts: failures`): it
    /// does not limit how often a write may be sent.
    counts_failures: bool,
    line: Option<usize>,
}

enum Route {
    Jwt(PathMatch),
    Full(RouteMatch),
}

impl Route {
    fn covers(&self, op: &Operation) -> bool {
        match self {
            Route::Jwt(m) => m.matches(&op.sample),
            Route::Full(m) => m.captures(&op.method, &op.sample).is_some(),
        }
    }
}

struct Checker<'a> {
    policy: &'a Policy,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn policy_finding(&mut self, severity: Severity, code: Code, message: String, line: Option<usize>) {
        self.findings.push(Finding { severity, code, message, file: self.policy.path.display().to_string(), line });
    }

    fn contract_finding(&mut self, contract: &Contract, code: Code, message: String, line: Option<usize>) {
        self.findings.push(Finding { severity: Severity::Error, code, message, file: contract.path.display().to_string(), line });
    }

    fn stage_line(&self, kind: &str) -> Option<usize> {
        line_of(&self.policy.text, &format!("{kind}:"), 1).or_else(|| line_of(&self.policy.text, &format!("\"{kind}\""), 1))
    }
}

/// Every finding for a policy (and its contract, when it has one).
pub fn check(policy: &Policy) -> Vec<Finding> {
    let mut c = Checker { policy, findings: Vec::new() };
    for stage in &policy.stages {
        let line = c.stage_line(&stage.kind);
        match compile_stage(stage) {
            Ok(()) => {}
            // Said once, precisely, by the audience check below.
            Err(StageError::Invalid(e)) if stage.kind == "jwt" && e.contains(".audiences") => {}
            Err(StageError::Invalid(e)) => c.policy_finding(Severity::Error, Code::InvalidStage, format!("{} stage: {e}", stage.kind), line),
            Err(StageError::SecretUnavailable(e)) => {
                c.policy_finding(Severity::Warning, Code::SecretUnavailable, format!("{} stage not compiled here: {e}", stage.kind), line)
            }
        }
    }
    check_audiences(&mut c);
    check_replay_keys(&mut c);
    check_idempotent_operations(&mut c);
    check_failure_limits(&mut c);
    if let Some(contract) = &policy.contract {
        check_contract(&mut c, contract);
    }
    c.findings
}

/// Replay keys come from signed material only (the webhook filter ignores an unsigned id), so a
/// generic scheme that signs neither an id nor a timestamp keys replays on the body alone.
fn check_replay_keys(c: &mut Checker<'_>) {
    let Some(Value::Array(endpoints)) = c.policy.stage("webhook").and_then(|s| s.config.get("endpoints")).cloned() else { return };
    for endpoint in endpoints {
        let Some(hmac) = endpoint.get("hmac") else { continue };
        if endpoint.get("replay_protection") == Some(&Value::Bool(false)) {
            continue;
        }
        let name = endpoint.get("name").and_then(Value::as_str).unwrap_or("?");
        let signed = hmac.get("signed_content").and_then(Value::as_str).unwrap_or("{body}");
        let line = line_of(&c.policy.text, name, 1);
        let message = match (hmac.get("id_header").and_then(Value::as_str), signed.contains("{id}"), signed.contains("{timestamp}")) {
            (Some(id), false, _) => format!(
                "webhook endpoint {name:?}: {id} is not in signed_content, so it cannot key replays (anyone can send a fresh one); \
                 deliveries are keyed on the digest of the signed content: sign {{id}} if the sender does"
            ),
            (None, false, false) => format!(
                "webhook endpoint {name:?}: only the body is signed, so two deliveries with the same body within \
                 replay_ttl_seconds count as one; sign a timestamp or an id if the sender does"
            ),
            _ => continue,
        };
        c.policy_finding(Severity::Warning, Code::ReplayKeyNotSigned, message, line);
    }
}

/// Idempotency keys are for writes: an operation that also matches reads refuses every read
/// without a key (400), which clients never send on a GET.
fn check_idempotent_operations(c: &mut Checker<'_>) {
    let Some(Value::Array(operations)) = c.policy.stage("idempotency").and_then(|s| s.config.get("operations")).cloned() else { return };
    for operation in operations {
        let name = operation.get("name").and_then(Value::as_str).unwrap_or("?");
        let methods: Option<Vec<String>> = operation.pointer("/match/methods").and_then(Value::as_array).map(|m| {
            m.iter().filter_map(Value::as_str).map(str::to_ascii_uppercase).collect()
        });
        let reads: Vec<&str> = match &methods {
            None => vec!["every method"],
            Some(m) => ["GET", "HEAD", "OPTIONS"].into_iter().filter(|r| m.iter().any(|x| x == r)).collect(),
        };
        if reads.is_empty() {
            continue;
        }
        let line = line_of(&c.policy.text, name, c.stage_line("idempotency").unwrap_or(1));
        let message = format!(
            "idempotency operation {name:?} matches {}: reads there would be refused without an Idempotency-Key; list the write methods",
            reads.join(", ")
        );
        c.policy_finding(Severity::Warning, Code::IdempotencyCoversReads, message, line);
    }
}

/// Token guessing is contained before the signature check only by a failure limit that runs
/// first: after `jwt`, the JWT stage's 401s never reach it.
fn check_failure_limits(c: &mut Checker<'_>) {
    let position = |kind: &str| c.policy.stages.iter().position(|s| s.kind == kind);
    let (Some(jwt), Some(ratelimit)) = (position("jwt"), position("ratelimit")) else { return };
    if ratelimit < jwt {
        return;
    }
    let Some(config) = c.policy.stage("ratelimit").and_then(Stage::ratelimit_config) else { return };
    for rule in &config.rules {
        let counts_401 = rule.failure_statuses().is_some_and(|statuses| statuses.contains(&401));
        if !counts_401 || rule.key.iter().any(KeyPart::from_principal) {
            continue;
        }
        let name = &rule.name;
        let line = line_of(&c.policy.text, name, c.stage_line("ratelimit").unwrap_or(1));
        let message = format!(
            "ratelimit rule {name:?} counts 401s by client, but the ratelimit stage runs after jwt: the JWT stage's refusals \
             (forged or expired tokens) never reach it; put the ratelimit stage before jwt to refuse a guessing client before its signature check"
        );
        c.policy_finding(Severity::Warning, Code::FailureLimitAfterJwt, message, line);
    }
}

fn check_audiences(c: &mut Checker<'_>) {
    let Some(Value::Object(providers)) = c.policy.stage("jwt").and_then(|s| s.config.get("providers")).cloned() else { return };
    for (name, provider) in providers {
        let audiences = provider.get("audiences").and_then(Value::as_array);
        if audiences.is_none_or(|a| a.iter().all(|x| x.as_str().is_none_or(|s| s.trim().is_empty()))) {
            let line = line_of(&c.policy.text, &name, c.stage_line("jwt").unwrap_or(1));
            let message = format!("JWT provider `{name}` has no audience: tokens minted for any other service would be accepted");
            c.policy_finding(Severity::Error, Code::ProviderWithoutAudience, message, line);
        }
    }
}

fn operations(contract: &Contract) -> Vec<Operation> {
    let doc = &contract.document;
    let global_security = doc.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    let Some(Value::Object(paths)) = doc.get("paths") else { return Vec::new() };
    let mut out = Vec::new();
    for (path, item) in paths {
        let sample: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') && seg.ends_with('}') { "meshward-sample" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let sample = canonical_path(&sample).unwrap_or(sample);
        let line = line_of(&contract.text, &format!("\"{path}\""), 1).or_else(|| line_of(&contract.text, &format!("{path}:"), 1));
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let secured = match op.get("security").and_then(Value::as_array) {
                Some(requirements) => !requirements.is_empty() && requirements.iter().all(|r| r.as_object().is_some_and(|o| !o.is_empty())),
                None => global_security,
            };
            out.push(Operation {
                id: op.get("operationId").and_then(Value::as_str).map_or_else(|| format!("{} {path}", method.to_uppercase()), str::to_string),
                method: method.to_uppercase(),
                template: path.clone(),
                sample: sample.clone(),
                secured,
                line,
            });
        }
    }
    out
}

fn route_rules(c: &Checker<'_>) -> Vec<RouteRule> {
    let mut out = Vec::new();
    for stage in &c.policy.stages {
        // Idempotency names its rules `operations`.
        let Some(Value::Array(rules)) = stage.config.get("rules").or_else(|| stage.config.get("operations")) else { continue };
        let from = c.stage_line(&stage.kind).unwrap_or(1);
        for (i, rule) in rules.iter().enumerate() {
            let name = rule.get("name").and_then(Value::as_str);
            let label = name.map_or_else(|| format!("{} rules[{i}]", stage.kind), |n| format!("{} rule `{n}`", stage.kind));
            let Some(m) = rule.get("match") else { continue };
            let route = if stage.kind == "jwt" {
                serde_json::from_value::<PathMatch>(m.clone()).ok().map(Route::Jwt)
            } else {
                serde_json::from_value::<RawRouteMatch>(m.clone()).ok().and_then(|raw| RouteMatch::compile(raw).ok()).map(Route::Full)
            };
            // A match the module refuses was reported as an invalid stage.
            let Some(route) = route else { continue };
            let needle = name.map(str::to_string).or_else(|| {
                m.as_object().and_then(|o| o.values().find_map(Value::as_str)).map(str::to_string)
            });
            let line = needle.and_then(|n| line_of(&c.policy.text, &n, from));
            let public = match stage.kind.as_str() {
                "jwt" => rule.get("requires").is_none(),
                _ => rule.get("public") == Some(&Value::Bool(true)),
            };
            let counts_failures = rule.get("counts").and_then(Value::as_str) == Some("failures");
            out.push(RouteRule { stage: stage.kind.clone(), label, route, public, counts_failures, line });
        }
    }
    out
}

fn check_contract(c: &mut Checker<'_>, contract: &Contract) {
    let ops = operations(contract);
    let rules = route_rules(c);
    for id in c.policy.public.clone() {
        if !ops.iter().any(|o| o.id == id) {
            let line = line_of(&c.policy.text, &id, 1);
            c.policy_finding(Severity::Error, Code::UnknownPublicOperation, format!("`public` names `{id}`, which is not an operationId of the contract"), line);
        }
    }
    let has = |kind: &str| c.policy.stage(kind).is_some();
    let (jwt, ownership, ratelimit) = (has("jwt"), has("ownership"), has("ratelimit"));
    for op in &ops {
        let what = format!("{} {} ({})", op.method, op.template, op.id);
        let public = c.policy.public.contains(&op.id);
        if !op.secured && !public {
            let message = format!("{what}: the contract declares no security requirement; secure it, or list it in `public` if it is public on purpose");
            c.contract_finding(contract, Code::NoSecurityRequirement, message, op.line);
        }
        let first = |stage: &str| rules.iter().find(|r| r.stage == stage && r.route.covers(op));
        if jwt {
            match first("jwt") {
                None => c.contract_finding(contract, Code::OperationNotCovered, format!("{what}: no JWT rule covers it, so every call is refused"), op.line),
                Some(rule) if rule.public && op.secured => {
                    let message = format!("{what}: the contract requires credentials, but {} lets it through without a token", rule.label);
                    c.findings.push(Finding { severity: Severity::Error, code: Code::TokenNotRequired, message, file: c.policy.path.display().to_string(), line: rule.line });
                }
                Some(_) => {}
            }
        }
        if !WRITES.contains(&op.method.as_str()) {
            continue;
        }
        // The ownership filter uses the first rule that matches; a public one checks nothing.
        if ownership && !public && first("ownership").is_none_or(|r| r.public) {
            let message = match first("ownership") {
                Some(r) => format!("{what}: a write operation that {} (public) lets through unchecked", r.label),
                None => format!("{what}: no ownership rule authorizes this write operation"),
            };
            c.contract_finding(contract, Code::WriteWithoutOwnership, message, op.line);
        }
        if !ownership && !public {
            c.contract_finding(contract, Code::WriteWithoutOwnership, format!("{what}: a write operation, and the policy has no ownership stage"), op.line);
        }
        if !ratelimit || !rules.iter().any(|r| r.stage == "ratelimit" && !r.counts_failures && r.route.covers(op)) {
            c.contract_finding(contract, Code::WriteWithoutRateLimit, format!("{what}: no rate limit covers this write operation"), op.line);
        }
    }
    for rule in &rules {
        if !ops.iter().any(|op| rule.route.covers(op)) {
            let message = format!("{} matches no operation of the contract", rule.label);
            c.policy_finding(Severity::Error, Code::RouteNotInContract, message, rule.line);
        }
    }
}

/// Findings as people read them: `file:line: error[code] message`, then a count.
pub fn render_text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let at = f.line.map_or_else(|| f.file.clone(), |l| format!("{}:{l}", f.file));
        let severity = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let code = serde_json::to_value(f.code).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        out.push_str(&format!("{at}: {severity}[{code}] {}\n", f.message));
    }
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    out.push_str(&format!("{errors} error(s), {} warning(s)\n", findings.len() - errors));
    out
}

/// The HCM options that make Envoy route (and the service receive) the path meshward decided on.
const NORMALIZATION: [(&str, &str); 3] =
    [("normalize_path", "true"), ("merge_slashes", "true"), ("path_with_escaped_slashes_action", "REJECT_REQUEST or UNESCAPE_AND_REDIRECT")];

/// Warnings for an Envoy configuration (YAML or JSON): every HTTP connection manager that
/// lacks a path normalization option.
pub fn check_envoy(file: &str, text: &str) -> Result<Vec<Finding>, String> {
    let config: Value = serde_yaml::from_str(text).map_err(|e| format!("{file}: not valid YAML or JSON: {e}"))?;
    let mut managers = Vec::new();
    find_managers(&config, &mut managers);
    if managers.is_empty() {
        return Err(format!("{file}: no HttpConnectionManager found"));
    }
    let mut findings = Vec::new();
    for (i, hcm) in managers.iter().enumerate() {
        let name = hcm.get("stat_prefix").and_then(Value::as_str).map_or_else(|| format!("#{i}"), str::to_string);
        for (option, wanted) in NORMALIZATION {
            let ok = match (option, hcm.get(option)) {
                ("path_with_escaped_slashes_action", Some(Value::String(a))) => a == "REJECT_REQUEST" || a == "UNESCAPE_AND_REDIRECT",
                (_, Some(Value::Bool(b))) => *b,
                _ => false,
            };
            if !ok {
                let line = line_of(text, option, 1).or_else(|| line_of(text, "HttpConnectionManager", i + 1));
                findings.push(Finding {
                    severity: Severity::Warning,
                    code: Code::PathNotNormalized,
                    message: format!("HTTP connection manager {name:?}: set {option}: {wanted}, so Envoy routes the path meshward checked"),
                    file: file.to_string(),
                    line,
                });
            }
        }
    }
    Ok(findings)
}

fn find_managers<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".HttpConnectionManager")) {
                out.push(value);
            }
            map.values().for_each(|v| find_managers(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| find_managers(v, out)),
        _ => {}
    }
}

/// Findings for tools.
pub fn render_json(findings: &[Finding]) -> String {
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    serde_json::json!({ "findings": findings, "errors": errors, "warnings": findings.len() - errors }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

    fn warnings(options: &str) -> Result<Vec<String>, String> {
        let text = format!("listeners:\n- filters:\n  - typed_config:\n      \"@type\": {HCM}\n      stat_prefix: ingress\n{options}");
        check_envoy("envoy.yaml", &text).map(|f| f.into_iter().map(|f| f.message).collect())
    }

    #[test]
    fn envoy_configs_without_path_normalization_are_flagged() {
        let all = "      normalize_path: true\n      merge_slashes: true\n      path_with_escaped_slashes_action: REJECT_REQUEST\n";
        assert_eq!(warnings(all), Ok(vec![]));
        let none = warnings("").unwrap();
        assert_eq!(none.len(), 3, "{none:?}");
        assert!(none[0].contains("\"ingress\": set normalize_path: true"), "{none:?}");
        let kept = warnings("      normalize_path: true\n      merge_slashes: false\n      path_with_escaped_slashes_action: KEEP_UNCHANGED\n").unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(check_envoy("x.yaml", "static_resources: {}").unwrap_err().contains("no HttpConnectionManager"));
        assert!(check_envoy("x.yaml", ": : :").unwrap_err().contains("not valid YAML"));
    }

    #[test]
    fn the_shipped_envoy_config_normalizes_paths() {
        let text = include_str!("../../../envoy/envoy.yaml");
        assert_eq!(check_envoy("envoy/envoy.yaml", text).map(|f| f.len()), Ok(0));
    }
}
