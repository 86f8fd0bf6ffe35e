//! `meshward.wasm`: every meshward policy in one module, one VM, one pass per request.
//!
//! The configuration is an ordered list of stages, each holding exactly the configuration its
//! own module takes, so moving from separate modules to the bundle is a copy:
//!
//! ```json
//! {"stages": [{"jwt": {...}}, {"ownership": {...}}, {"ratelimit": {...}}]}
//! ```
//!
//! With `"audit": {"records": "writes" | "all"}` beside `stages`, every request it covers
//! leaves one audit record (`meshward_core::audit`) with every stage's decision.
//!
//! Stages run in order and the first enforced denial answers; the JWT stage hands the principal
//! to the later stages in memory (and still publishes it to filter state for other filters).

use std::rc::Rc;

use meshward_core::audit::AuditConfig;
use meshward_core::config::ConfigError;
use meshward_core::Policy;
use meshward_host::Host;
use meshward_runtime::{AnyPolicy, Plan};
use serde_json::Value;

/// The custom section in which a module names the stages built into it, one per line: what
/// `meshward render` reads to pick the smallest module that runs a policy.
pub const STAGES_SECTION: &str = "meshward.stages";

/// `kind` and a newline: one line of the `meshward.stages` section.
#[cfg(target_arch = "wasm32")]
const fn section_line<const N: usize>(kind: &str) -> [u8; N] {
    let mut line = [b'\n'; N];
    let mut i = 0;
    while i < kind.len() {
        line[i] = kind.as_bytes()[i];
        i += 1;
    }
    line
}

/// The stage kinds the bundle knows (each a cargo feature of this crate), and those built into
/// this module (their features on), listed in `BUILT_STAGES` and, one line each, in the
/// `meshward.stages` custom section (`STAGES_SECTION`: an attribute takes only a literal;
/// statics sharing a section name are concatenated by the linker).
macro_rules! stages {
    ($($feature:literal),* $(,)?) => {
        /// The stage kinds the bundle knows, by their configuration key.
        pub const STAGE_KINDS: [&str; [$($feature),*].len()] = [$($feature),*];
        /// The stage kinds built into this module.
        pub const BUILT_STAGES: &[&str] = &[$(#[cfg(feature = $feature)] $feature),*];
        $(
            const _: () = {
                #[cfg(all(feature = $feature, target_arch = "wasm32"))]
                #[link_section = "meshward.stages"]
                #[used]
                static LINE: [u8; $feature.len() + 1] = section_line($feature);
            };
        )*
    };
}
stages!("jwt", "webhook", "idempotency", "schema", "grpc", "graphql", "ownership", "ratelimit");

/// A module that verifies public-key token signatures itself says so in the same section, as a
/// line `signatures`: `meshward render` deploys a module without them (the `native` edition)
/// only for a policy whose every JWT provider reads Envoy's jwt_authn.
pub const SIGNATURES_LINE: &str = "signatures";

#[cfg(all(feature = "signatures", target_arch = "wasm32"))]
#[link_section = "meshward.stages"]
#[used]
static SIGNATURES: [u8; SIGNATURES_LINE.len() + 1] = section_line(SIGNATURES_LINE);

/// The policies of one bundle configuration, in order.
pub struct Bundle {
    policies: Vec<Box<dyn AnyPolicy>>,
    audit: Option<AuditConfig>,
}

fn stage<P: Policy>(at: &str, config: &Value, host: &dyn Host) -> Result<Box<dyn AnyPolicy>, ConfigError> {
    let bytes = serde_json::to_vec(config).map_err(|e| ConfigError::new(at, e.to_string()))?;
    let policy = P::configure(&bytes, host).map_err(|e| {
        let path = if e.path.is_empty() { at.to_string() } else { format!("{at}.{}", e.path) };
        ConfigError::new(path, e.message)
    })?;
    Ok(Box::new(Rc::new(policy)))
}

impl Plan for Bundle {
    const WRITES_AUDIT_RECORDS: bool = true;

    fn module_name() -> &'static str {
        "meshward"
    }

    fn configure(config: &[u8], host: &dyn Host) -> Result<Self, ConfigError> {
        let document: Value = serde_json::from_slice(config).map_err(|e| ConfigError::new("", format!("not JSON: {e}")))?;
        let Value::Object(top) = document else {
            return Err(ConfigError::new("", "the configuration is a JSON object with `stages`"));
        };
        if let Some(unknown) = top.keys().find(|k| *k != "stages" && *k != "audit") {
            return Err(ConfigError::new(unknown.as_str(), format!("unknown field `{unknown}`, expected `stages` or `audit`")));
        }
        let audit = match top.get("audit") {
            None => None,
            Some(value) => {
                let bytes = serde_json::to_vec(value).map_err(|e| ConfigError::new("audit", e.to_string()))?;
                Some(AuditConfig::parse(&bytes).map_err(|e| ConfigError::new(format!("audit.{}", e.path).trim_end_matches('.'), e.message))?)
            }
        };
        let Some(Value::Array(stages)) = top.get("stages") else {
            return Err(ConfigError::new("stages", "is required: a list of stages such as {\"jwt\": {...}}"));
        };
        if stages.is_empty() {
            return Err(ConfigError::new("stages", "at least one stage is required"));
        }
        let mut policies: Vec<Box<dyn AnyPolicy>> = Vec::with_capacity(stages.len());
        for (i, entry) in stages.iter().enumerate() {
            let at = format!("stages[{i}]");
            let (kind, config) = match entry {
                Value::Object(map) if map.len() == 1 => map.iter().next().map(|(k, v)| (k.as_str(), v)).ok_or_else(|| ConfigError::new(&at, "is empty"))?,
                _ => return Err(ConfigError::new(&at, "must be an object with exactly one key: the stage kind")),
            };
            let at = format!("{at}.{kind}");
            if policies.iter().any(|p| p.name() == kind) {
                return Err(ConfigError::new(&at, format!("a second `{kind}` stage: put all its rules in one")));
            }
            policies.push(match kind {
                #[cfg(feature = "jwt")]
                "jwt" => stage::<meshward_jwt::JwtPolicy>(&at, config, host)?,
                #[cfg(feature = "webhook")]
                "webhook" => stage::<meshward_webhook::WebhookPolicy>(&at, config, host)?,
                #[cfg(feature = "ownership")]
                "ownership" => stage::<meshward_ownership::OwnershipPolicy>(&at, config, host)?,
                #[cfg(feature = "ratelimit")]
                "ratelimit" => stage::<meshward_ratelimit::RateLimitPolicy>(&at, config, host)?,
                #[cfg(feature = "schema")]
                "schema" => stage::<meshward_schema::SchemaPolicy>(&at, config, host)?,
                #[cfg(feature = "idempotency")]
                "idempotency" => stage::<meshward_idempotency::IdempotencyPolicy>(&at, config, host)?,
                #[cfg(feature = "grpc")]
                "grpc" => stage::<meshward_grpc::GrpcPolicy>(&at, config, host)?,
                #[cfg(feature = "graphql")]
                "graphql" => stage::<meshward_graphql::GraphqlPolicy>(&at, config, host)?,
                known if STAGE_KINDS.contains(&known) => {
                    return Err(ConfigError::new(
                        &at,
                        format!(
                            "the `{known}` stage is not built into this module (it holds {}): `meshward render` picks a module with every stage of the policy; meshward.wasm holds them all",
                            BUILT_STAGES.join(", ")
                        ),
                    ))
                }
                other => {
                    return Err(ConfigError::new(
                        format!("stages[{i}]"),
                        format!("unknown stage `{other}`, expected one of {}", STAGE_KINDS.join(", ")),
                    ))
                }
            });
        }
        Ok(Bundle { policies, audit })
    }

    fn policies(&self) -> &[Box<dyn AnyPolicy>] {
        &self.policies
    }

    fn audit(&self) -> Option<AuditConfig> {
        self.audit.clone()
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<Bundle>();
}}
