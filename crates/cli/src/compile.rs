//! Each stage's configuration compiled by its own filter's parser, so `meshward check` refuses
//! exactly what the module would refuse at load.

use meshward_core::config::ConfigError;

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

/// Compiles one stage with its filter's own parser.
pub fn compile_stage(stage: &Stage) -> Result<(), StageError> {
    let bytes = serde_json::to_vec(&stage.config).map_err(|e| StageError::Invalid(e.to_string()))?;
    let result = match stage.kind.as_str() {
        "jwt" => meshward_jwt::JwtConfig::parse(&bytes, &env).map(drop),
        "webhook" => meshward_webhook::WebhookConfig::parse(&bytes, &env).map(drop),
        "schema" => meshward_schema::SchemaConfig::parse(&bytes).map(drop),
        "ownership" => meshward_ownership::OwnershipConfig::parse(&bytes).map(drop),
        "ratelimit" => meshward_ratelimit::RateLimitConfig::parse(&bytes).map(drop),
        other => return Err(StageError::Invalid(format!("unknown stage `{other}`"))),
    };
    result.map_err(classify)
}

