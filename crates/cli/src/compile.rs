//! Each stage's configuration compiled by its own filter's parser, so `meshward check` refuses
//! exactly what the module would refuse at load.

use meshward_core::config::ConfigError;
use meshward_ratelimit::config::{KeyPart, Scope};
use meshward_ratelimit::RateLimitConfig;
use serde_json::{json, Value};

use crate::policy::{Policy, Stage};

/// Why a stage's configuration was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageError {
    /// The module would refuse it; the error names the field.
    Invalid(String),
    /// It reads a secret from an environment variable this process does not have, so it could
    /// not be compiled here (the sidecar gets it through `vmConfig.env`).
    SecretUnavailable(String),
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn classify(e: ConfigError) -> StageError {
    let text = e.to_string();
    if text.contains("environment variable") && text.contains("not set") {
        StageError::SecretUnavailable(text)
    } else {
        StageError::Invalid(text)
    }
}

/// Compiles every stage; the first a module would refuse is the error (`ratelimit stage: ...`).
/// Secrets this process lacks are the sidecar's business, not an error here.
pub fn compile_policy(policy: &Policy) -> Result<(), String> {
    for stage in &policy.stages {
        if let Err(StageError::Invalid(e)) = compile_stage(stage) {
            return Err(format!("{} stage: {e}", stage.kind));
        }
    }
    Ok(())
}

/// The fleet engine's configuration (`meshward-fleet --config`): the limit of every global
/// rate-limit rule, so the budget lives in the policy with the rule. `None` without global rules.
pub fn fleet_config(policy: &Policy) -> Result<Option<Value>, String> {
    let Some(stage) = policy.stage("ratelimit") else { return Ok(None) };
    let bytes = serde_json::to_vec(&stage.config).map_err(|e| e.to_string())?;
    let config = RateLimitConfig::parse(&bytes).map_err(|e| format!("ratelimit stage: {e}"))?;
    let Some(global) = &config.global else { return Ok(None) };
    let mut limits = Vec::new();
    for rule in config.rules.iter().filter(|r| r.scope == Scope::Global) {
        let Some(limit) = rule.limit else {
            return Err(format!("ratelimit stage: global rule {:?} declares no `limit`; meshward-fleet takes it from the policy", rule.name));
        };
        limits.push(json!({
            "domain": global.domain,
            "rule": rule.name,
            "key": rule.key.iter().map(KeyPart::descriptor_key).collect::<Vec<_>>(),
            "requests": limit.requests,
            "per": format!("{}s", limit.period_us / 1_000_000),
        }));
    }
    Ok(Some(json!({ "limits": limits })))
}

/// Compiles one stage with its filter's own parser.
pub fn compile_stage(stage: &Stage) -> Result<(), StageError> {
    let bytes = serde_json::to_vec(&stage.config).map_err(|e| StageError::Invalid(e.to_string()))?;
    let result = match stage.kind.as_str() {
        "jwt" => meshward_jwt::JwtConfig::parse(&bytes, &env).map(drop),
        "webhook" => meshward_webhook::WebhookConfig::parse(&bytes, &env).map(drop),
        "idempotency" => meshward_idempotency::IdempotencyConfig::parse(&bytes).map(drop),
        "schema" => meshward_schema::SchemaConfig::parse(&bytes).map(drop),
        "grpc" => meshward_grpc::GrpcConfig::parse(&bytes).map(drop),
        "graphql" => meshward_graphql::GraphqlConfig::parse(&bytes).map(drop),
        "ownership" => meshward_ownership::OwnershipConfig::parse(&bytes).map(drop),
        "ratelimit" => meshward_ratelimit::RateLimitConfig::parse(&bytes).map(drop),
        other => return Err(StageError::Invalid(format!("unknown stage `{other}`"))),
    };
    result.map_err(classify)
}

