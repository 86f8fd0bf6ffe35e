//! A service's policy file: who the service is, where its contract is, and the ordered stages,
//! each with exactly the configuration its filter module takes.
//!
//! ```yaml
//! service: crapi
//! namespace: crapi
//! selector: { app: crapi }
//! openapi: crapi-openapi-spec.json        # relative to this file
//! public: [login, signup]                 # operationIds that are public on purpose
//! modules: { url: "oci://registry.example.com/meshward/{module}:0.1.0" }
//! stages:
//!   - jwt: { providers: { ... }, rules: [ ... ] }
//!   - schema: { mode: shadow }            # the contract is added from `openapi`
//!   - ownership: { rules: [ ... ] }
//!   - ratelimit: { rules: [ ... ] }
//! audit: { records: writes }              # one audit record per write (or `all`); bundle only
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshward_core::audit::AuditConfig;
use meshward_ratelimit::config::KeyPart;
use meshward_ratelimit::RateLimitConfig;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The stage kinds, in the order the bundle knows them.
pub const KINDS: [&str; 8] = meshward_bundle_filter::STAGE_KINDS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    service: String,
    namespace: Option<String>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    openapi: Option<String>,
    #[serde(default)]
    public: Vec<String>,
    modules: Option<RawModules>,
    stages: Vec<Map<String, Value>>,
    rollout: Option<RawRollout>,
    audit: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    window: Option<String>,
    budgets: BTreeMap<String, String>,
    min_shadow: Option<String>,
}

/// How the service is promoted from shadow to enforce: per stage, the most of its decisions
/// that may be denials over `window` (`meshward rollout status` reads them from Prometheus).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub window_secs: u64,
    /// Stage kind -> budget as a fraction (`"0.1%"` is 0.001), in stage order.
    pub budgets: Vec<(String, f64)>,
    /// How long a shadow stage must have reported decisions before it may be promoted.
    pub min_shadow_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModules {
    url: String,
}

/// One stage: its kind and the configuration its module takes.
#[derive(Debug, Clone)]
pub struct Stage {
    pub kind: String,
    pub config: Value,
}

impl Stage {
    /// The configuration as its module loads it: a schema stage's OpenAPI document compiled
    /// into the contract the module runs (`meshward_schema::compile`); any other stage as
    /// written. The error is the module's refusal, naming the field.
    pub fn module_config(&self) -> Result<Value, String> {
        let bytes = serde_json::to_vec(&self.config).map_err(|e| e.to_string())?;
        if self.kind == "schema" && meshward_schema::compile::is_source(&bytes) {
            return meshward_schema::compile::compile(&bytes).map_err(|e| format!("schema stage: {e}"));
        }
        Ok(self.config.clone())
    }

    /// A ratelimit stage's configuration as its module reads it (`None`: another stage, or
    /// one the module refuses).
    pub fn ratelimit_config(&self) -> Option<RateLimitConfig> {
        if self.kind != "ratelimit" {
            return None;
        }
        RateLimitConfig::parse(&serde_json::to_vec(&self.config).ok()?).ok()
    }
}

/// The contract a policy is checked against.
#[derive(Debug, Clone)]
pub struct Contract {
    pub path: PathBuf,
    pub text: String,
    pub document: Value,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    pub text: String,
    pub service: String,
    pub namespace: Option<String>,
    pub selector: BTreeMap<String, String>,
    pub public: Vec<String>,
    /// Module URL pattern; `{module}` becomes `meshward_jwt`, ..., or `meshward`.
    pub module_url: Option<String>,
    pub stages: Vec<Stage>,
    pub contract: Option<Contract>,
    pub rollout: Option<Rollout>,
    /// Audit records (the bundle's `audit`), checked as the bundle reads them.
    pub audit: Option<Value>,
    /// The files it reads besides itself (its contract, a gRPC descriptor set, a GraphQL
    /// schema): `meshward serve` watches them too.
    pub inputs: Vec<PathBuf>,
}

/// A policy that cannot be used at all: unreadable, unparsable, or structurally wrong.
#[derive(Debug)]
pub struct PolicyError {
    pub message: String,
    /// A file could not be read (missing, not permitted, too many open files): the same files
    /// may load on a later try, where a policy refused for what it says will not.
    pub unreadable: bool,
}

impl PolicyError {
    fn new(message: String) -> PolicyError {
        PolicyError { message, unreadable: false }
    }

    fn unreadable(path: &Path, e: std::io::Error) -> PolicyError {
        PolicyError { message: format!("{}: {e}", path.display()), unreadable: true }
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|e| PolicyError::unreadable(path, e))
}

/// JSON or YAML text as a JSON value.
/// Whether a policy or contract file is JSON (by its name or its first character), else YAML.
pub fn is_json(path: &Path, text: &str) -> bool {
    path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{')
}

pub fn parse_text(path: &Path, text: &str) -> Result<Value, PolicyError> {
    if is_json(path, text) {
        serde_json::from_str(text).map_err(|e| PolicyError::new(format!("{}: not valid JSON: {e}", path.display())))
    } else {
        serde_yaml::from_str(text).map_err(|e| PolicyError::new(format!("{}: not valid YAML: {e}", path.display())))
    }
}

pub fn load_contract(path: &Path) -> Result<Contract, PolicyError> {
    let text = read(path)?;
    let document = parse_text(path, &text)?;
    Ok(Contract { path: path.to_path_buf(), text, document })
}

impl Policy {
    /// Reads a policy file; `openapi` overrides the contract the file names.
    pub fn load(path: &Path, openapi: Option<&Path>) -> Result<Policy, PolicyError> {
        let text = read(path)?;
        let value = parse_text(path, &text)?;
        let raw: RawPolicy = serde_json::from_value(value).map_err(|e| PolicyError::new(format!("{}: {e}", path.display())))?;
        if raw.service.is_empty() || !raw.service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(PolicyError::new(format!("{}: service: {:?} must be a DNS label (a-z, 0-9, -)", path.display(), raw.service)));
        }
        if raw.stages.is_empty() {
            return Err(PolicyError::new(format!("{}: stages: at least one stage", path.display())));
        }
        let mut stages: Vec<Stage> = Vec::new();
        for (i, stage) in raw.stages.into_iter().enumerate() {
            let mut entries = stage.into_iter();
            let (Some((kind, config)), None) = (entries.next(), entries.next()) else {
                return Err(PolicyError::new(format!("{}: stages[{i}]: must be an object with exactly one key", path.display())));
            };
            if !KINDS.contains(&kind.as_str()) {
                return Err(PolicyError::new(format!("{}: stages[{i}]: unknown stage `{kind}` (one of {})", path.display(), KINDS.join(", "))));
            }
            if stages.iter().any(|s| s.kind == kind) {
                return Err(PolicyError::new(format!("{}: stages[{i}]: a second `{kind}` stage", path.display())));
            }
            stages.push(Stage { kind, config });
        }
        // Keys are scoped to the caller the jwt stage verified: that stage runs first.
        let position = |kind: &str| stages.iter().position(|s| s.kind == kind);
        if let Some(i) = position("idempotency") {
            if position("jwt").is_none_or(|j| j >= i) {
                return Err(PolicyError::new(format!(
                    "{}: stages[{i}]: idempotency keys belong to the authenticated caller: put a `jwt` stage before it",
                    path.display()
                )));
            }
        }
        // A rule keyed on the principal sees none before the jwt stage ran: it would never apply.
        if let (Some(r), Some(j)) = (position("ratelimit"), position("jwt")) {
            // (A configuration the module refuses is reported by `check` as an invalid stage.)
            if let Some(config) = stages[r].ratelimit_config().filter(|_| r < j) {
                if let Some(n) = config.rules.iter().position(|rule| rule.key.iter().any(KeyPart::from_principal)) {
                    return Err(PolicyError::new(format!(
                        "{}: stages[{r}].ratelimit.rules[{n}]: keys on the principal, but the ratelimit stage runs before the jwt stage, where there is none yet: move the stage after jwt (failure limits keyed by client_ip or a header belong before it)",
                        path.display()
                    )));
                }
            }
        }
        let rollout = raw.rollout.map(|r| compile_rollout(r, &stages)).transpose().map_err(|e| PolicyError::new(format!("{}: rollout.{e}", path.display())))?;
        if let Some(audit) = &raw.audit {
            let bytes = serde_json::to_vec(audit).map_err(|e| PolicyError::new(e.to_string()))?;
            AuditConfig::parse(&bytes).map_err(|e| PolicyError::new(format!("{}: audit: {}", path.display(), e.message)))?;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let contract_path = openapi.map(Path::to_path_buf).or_else(|| raw.openapi.map(|p| dir.join(p)));
        let contract = contract_path.map(|p| load_contract(&p)).transpose()?;
        let mut policy = Policy {
            path: path.to_path_buf(),
            text,
            service: raw.service,
            namespace: raw.namespace,
            selector: raw.selector,
            public: raw.public,
            module_url: raw.modules.map(|m| m.url),
            stages,
            inputs: contract.iter().map(|c| c.path.clone()).collect(),
            contract,
            rollout,
            audit: raw.audit,
        };
        policy.add_contract_to_schema_stage()?;
        policy.inline_file("grpc", "descriptor_set", |bytes| {
            use ct_codecs::{Base64, Encoder};
            Base64::encode_to_string(&bytes).map_err(|e| e.to_string())
        })?;
        policy.inline_file("graphql", "schema", |bytes| String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string()))?;
        Ok(policy)
    }

    /// The schema stage enforces the policy's contract unless it names its own.
    fn add_contract_to_schema_stage(&mut self) -> Result<(), PolicyError> {
        let Some(stage) = self.stages.iter_mut().find(|s| s.kind == "schema") else { return Ok(()) };
        let Value::Object(config) = &mut stage.config else {
            return Err(PolicyError::new(format!("{}: the schema stage must be an object", self.path.display())));
        };
        if config.contains_key("openapi") || config.contains_key("openapi_text") {
            return Ok(());
        }
        let Some(contract) = &self.contract else {
            return Err(PolicyError::new(format!("{}: the schema stage needs `openapi` (in the policy or --openapi)", self.path.display())));
        };
        config.insert("openapi".into(), contract.document.clone());
        Ok(())
    }

    /// A stage's `<field>_file` (relative to the policy) becomes the `<field>` its module reads:
    /// a grpc stage's `descriptor_set_file` (`protoc --include_imports --descriptor_set_out`,
    /// `buf build -o`; base64), a graphql stage's `schema_file` (SDL, as text).
    fn inline_file(&mut self, kind: &str, field: &str, encode: fn(Vec<u8>) -> Result<String, String>) -> Result<(), PolicyError> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let at = |message: String| PolicyError::new(format!("{}: {kind}.{field}_file: {message}", self.path.display()));
        let Some(Value::Object(config)) = self.stages.iter_mut().find(|s| s.kind == kind).map(|s| &mut s.config) else { return Ok(()) };
        let Some(file) = config.remove(&format!("{field}_file")) else { return Ok(()) };
        let Value::String(file) = file else { return Err(at("a path".into())) };
        if config.contains_key(field) {
            return Err(at(format!("give `{field}` or `{field}_file`, not both")));
        }
        let path = dir.join(&file);
        let bytes = std::fs::read(&path).map_err(|e| PolicyError { unreadable: true, ..at(format!("{}: {e}", path.display())) })?;
        let encoded = encode(bytes).map_err(|e| at(format!("{}: {e}", path.display())))?;
        config.insert(field.into(), Value::String(encoded));
        self.inputs.push(path);
        Ok(())
    }

    pub fn stage(&self, kind: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.kind == kind)
    }

    /// Whether the module must verify public-key token signatures itself: a jwt stage with a
    /// provider that does not read what Envoy's jwt_authn verified (`from_native_jwt_authn`).
    pub fn verifies_signatures(&self) -> bool {
        self.stage("jwt").is_some_and(|s| match s.config.get("providers") {
            Some(Value::Object(providers)) => providers.values().any(|p| p.get("from_native_jwt_authn").is_none()),
            _ => true,
        })
    }

    /// The configuration of the bundle (`meshward.wasm`) running every stage in order.
    pub fn bundle_config(&self) -> Result<Value, String> {
        let stages = self.stages.iter().map(|s| Ok(Value::Object(Map::from_iter([(s.kind.clone(), s.module_config()?)])))).collect::<Result<Vec<Value>, String>>()?;
        let mut config = serde_json::json!({ "stages": stages });
        if let Some(audit) = &self.audit {
            config["audit"] = audit.clone();
        }
        Ok(config)
    }

    /// Environment variables the stages read secrets from (`environment_variable` fields).
    pub fn secret_variables(config: &Value) -> Vec<String> {
        fn walk(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    for (k, v) in map {
                        match (k.as_str(), v) {
                            ("environment_variable", Value::String(name)) if !out.contains(name) => out.push(name.clone()),
                            _ => walk(v, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(config, &mut out);
        out
    }
}

const DEFAULT_ROLLOUT_WINDOW_SECS: u64 = 3600;

fn compile_rollout(raw: RawRollout, stages: &[Stage]) -> Result<Rollout, String> {
    let window_secs = match raw.window {
        None => DEFAULT_ROLLOUT_WINDOW_SECS,
        Some(text) => {
            let d = meshward_core::config::parse_duration("window", &text).map_err(|e| e.to_string())?;
            if d.as_secs() < 60 || d.subsec_nanos() != 0 {
                return Err(format!("window: {text:?} must be whole seconds, at least 60s"));
            }
            d.as_secs()
        }
    };
    if raw.budgets.is_empty() {
        return Err("budgets: name at least one stage's budget (`schema: 0.1%`)".into());
    }
    let mut budgets = Vec::new();
    for stage in stages {
        if let Some(text) = raw.budgets.get(&stage.kind) {
            let fraction = text
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
                .map(|p| p / 100.0)
                .ok_or_else(|| format!("budgets.{}: {text:?} is not a percentage (\"0.1%\")", stage.kind))?;
            budgets.push((stage.kind.clone(), fraction));
        }
    }
    if let Some(unknown) = raw.budgets.keys().find(|k| !stages.iter().any(|s| &s.kind == *k)) {
        return Err(format!("budgets.{unknown}: the policy has no `{unknown}` stage"));
    }
    let min_shadow_secs = match raw.min_shadow {
        None => None,
        Some(text) => {
            let d = meshward_core::config::parse_duration("min_shadow", &text).map_err(|e| e.to_string())?;
            if d.as_secs() == 0 || d.subsec_nanos() != 0 {
                return Err(format!("min_shadow: {text:?} must be whole seconds (\"604800s\" for a week)"));
            }
            Some(d.as_secs())
        }
    };
    Ok(Rollout { window_secs, budgets, min_shadow_secs })
}

/// The 1-based line of the first line containing `needle` at or after line `from`, if any.
pub fn line_of(text: &str, needle: &str, from: usize) -> Option<usize> {
    text.lines().enumerate().skip(from.saturating_sub(1)).find(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1)
}
