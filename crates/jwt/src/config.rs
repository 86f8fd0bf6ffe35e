//! The JWT filter's configuration: Envoy `jwt_authn` names, meshward's safer defaults.
//!
//! Parsed strictly (an unknown field is an error naming it) and compiled once into
//! [`JwtConfig`], with local key sets already parsed.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use meshward_core::config::{parse_duration, parse_json, valid_header_name, ConfigError};
use meshward_core::route::PathMatch;
use meshward_core::Mode;
use serde::Deserialize;

use crate::jwks::{parse_jwks, KeySet};
use crate::revocation::Revocations;

const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
const DEFAULT_TENANT_CLAIM: &str = "tenant";
const DEFAULT_TOKEN_CACHE_SIZE: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: BTreeMap<String, RawProvider>,
    rules: Vec<RawRule>,
    #[serde(default)]
    mode: Mode,
    max_token_bytes: Option<usize>,
    token_cache_size: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    local_jwks: Option<RawDataSource>,
    remote_jwks: Option<RawRemoteJwks>,
    from_native_jwt_authn: Option<RawNative>,
    from_headers: Option<Vec<RawHeader>>,
    #[serde(default)]
    forward: bool,
    #[serde(default)]
    claim_to_headers: Vec<RawClaimToHeader>,
    clock_skew_seconds: Option<u64>,
    require_expiration: Option<bool>,
    tenant_claim: Option<String>,
    revoked: Option<crate::revocation::RawRevoked>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataSource {
    inline_string: Option<String>,
    environment_variable: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNative {
    payload_in_metadata: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    http_uri: RawHttpUri,
    cache_duration: Option<String>,
    unavailable_status: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpUri {
    uri: String,
    cluster: String,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimToHeader {
    header_name: String,
    claim_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    match_: PathMatch,
    requires: Option<RawRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawRequirement {
    ProviderName(String),
    RequiresAny { requirements: Vec<RawRequirement> },
    RequiresAll { requirements: Vec<RawRequirement> },
    AllowMissing {},
}

/// Where a token is looked for: a header, and the prefix its value must start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLocation {
    /// Lower-case header name.
    pub header: String,
    /// Compared case-insensitively (`Bearer ` and `bearer ` are the same scheme).
    pub value_prefix: String,
}

/// Copy a claim of the verified token into a request header for the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header_name: String,
    /// Claim name, or a dotted path into nested objects.
    pub claim_name: String,
}

/// Where a remote key set is fetched from, through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub uri: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub cache_duration: Duration,
    /// The answer while no key set could be fetched: 503 (+ `Retry-After`, the default: the
    /// caller did nothing wrong) or 401.
    pub unavailable_status: u16,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Local(Rc<KeySet>),
    Remote(RemoteJwks),
    /// Envoy's `jwt_authn`, earlier in the filter chain, verified the token and stored its
    /// payload in dynamic metadata under this key (its `payload_in_metadata`).
    Native { payload_in_metadata: String },
}

/// A trusted token issuer and how its tokens are checked.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub from_headers: Vec<TokenLocation>,
    /// Keep the token in the request forwarded upstream (default: removed).
    pub forward: bool,
    pub claim_to_headers: Vec<ClaimToHeader>,
    pub clock_skew_seconds: u64,
    pub require_expiration: bool,
    pub tenant_claim: String,
    /// Tokens that verify but are no longer accepted.
    pub revoked: Revocations,
}

/// What a rule demands, by provider index into [`JwtConfig::providers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Satisfied when no token is present at all; a token that is present must still verify
    /// (use inside `requires_any`).
    AllowMissing,
}

/// Which requests a rule covers and what they need. `requires: None` means no token needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path_match: PathMatch,
    pub requires: Option<Requirement>,
}

/// The compiled configuration of the JWT filter.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    pub mode: Mode,
    pub max_token_bytes: usize,
    /// Verified tokens remembered per VM (0 = verify every time).
    pub token_cache_size: usize,
}

impl JwtConfig {
    /// Parses and validates the filter configuration. `env` reads the VM's environment, for
    /// key sets given as `environment_variable`.
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<JwtConfig, ConfigError> {
        let raw: RawConfig = parse_json(json)?;
        if raw.providers.is_empty() {
            return Err(ConfigError::new("providers", "at least one provider is required"));
        }
        if raw.rules.is_empty() {
            return Err(ConfigError::new(
                "rules",
                "at least one rule is required (requests matching no rule are denied)",
            ));
        }
        let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
        if !(256..=65_536).contains(&max_token_bytes) {
            return Err(ConfigError::new("max_token_bytes", "must be between 256 and 65536"));
        }
        let token_cache_size = raw.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE);
        if token_cache_size > 65_536 {
            return Err(ConfigError::new("token_cache_size", "must be at most 65536"));
        }
        let names: Vec<String> = raw.providers.keys().cloned().collect();
        let mut providers = Vec::with_capacity(names.len());
        for (name, p) in raw.providers {
            providers.push(compile_provider(&name, p, env)?);
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, rule) in raw.rules.into_iter().enumerate() {
            let path = format!("rules[{i}]");
            match &rule.match_ {
                PathMatch::Prefix(p) | PathMatch::Path(p) if !p.starts_with('/') => {
                    return Err(ConfigError::new(format!("{path}.match"), "must start with '/'"));
                }
                _ => {}
            }
            let requires = match rule.requires {
                None => None,
                Some(r) => Some(compile_requirement(&format!("{path}.requires"), r, &names, 0)?),
            };
            rules.push(Rule {
                path_match: rule.match_,
                requires,
            });
        }
        Ok(JwtConfig {
            providers,
            rules,
            mode: raw.mode,
            max_token_bytes,
            token_cache_size,
        })
    }

    /// The first rule matching a canonical path.
    pub fn rule_for(&self, canonical_path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.path_match.matches(canonical_path))
    }
}

fn compile_requirement(
    path: &str,
    raw: RawRequirement,
    names: &[String],
    depth: usize,
) -> Result<Requirement, ConfigError> {
    if depth > 8 {
        return Err(ConfigError::new(path, "requirements nest deeper than 8 levels"));
    }
    let list = |kind: &str, reqs: Vec<RawRequirement>| -> Result<Vec<Requirement>, ConfigError> {
        if reqs.is_empty() {
            return Err(ConfigError::new(format!("{path}.{kind}"), "needs at least one requirement"));
        }
        reqs.into_iter()
            .enumerate()
            .map(|(i, r)| compile_requirement(&format!("{path}.{kind}.requirements[{i}]"), r, names, depth + 1))
            .collect()
    };
    Ok(match raw {
        RawRequirement::ProviderName(name) => match names.iter().position(|n| *n == name) {
            Some(i) => Requirement::Provider(i),
            None => {
                return Err(ConfigError::new(
                    format!("{path}.provider_name"),
                    format!("no provider named {name:?}"),
                ))
            }
        },
        RawRequirement::RequiresAny { requirements } => Requirement::Any(list("requires_any", requirements)?),
        RawRequirement::RequiresAll { requirements } => Requirement::All(list("requires_all", requirements)?),
        RawRequirement::AllowMissing {} => Requirement::AllowMissing,
    })
}

/// Headers that must not be overwritten from claims: routing and framing depend on them.
const PROTECTED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-request-id",
];

fn compile_provider(
    name: &str,
    p: RawProvider,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
    let at = |field: &str| format!("providers.{name}.{field}");
    let issuer = match p.issuer {
        Some(i) if !i.trim().is_empty() => i,
        _ => {
            return Err(ConfigError::new(
                at("issuer"),
                "is required: tokens from any issuer would otherwise be accepted",
            ))
        }
    };
    let audiences = match p.audiences {
        Some(a) if !a.is_empty() && a.iter().all(|x| !x.trim().is_empty()) => a,
        Some(a) if !a.is_empty() => return Err(ConfigError::new(at("audiences"), "must not contain empty strings")),
        _ => {
            return Err(ConfigError::new(
                at("audiences"),
                "at least one audience is required: tokens minted for other services would otherwise be accepted",
            ))
        }
    };
    let keys = match (p.local_jwks, p.remote_jwks, p.from_native_jwt_authn) {
        (Some(local), None, None) => {
            let text = match (local.inline_string, local.environment_variable) {
                (Some(s), None) => s,
                (None, Some(var)) => env(&var).ok_or_else(|| {
                    ConfigError::new(
                        at("local_jwks.environment_variable"),
                        format!("environment variable {var:?} is not set in the VM"),
                    )
                })?,
                _ => {
                    return Err(ConfigError::new(
                        at("local_jwks"),
                        "set exactly one of `inline_string` or `environment_variable`",
                    ))
                }
            };
            let parsed = parse_jwks(text.as_bytes(), true)
                .map_err(|e| ConfigError::new(at("local_jwks"), e.to_string()))?;
            KeySource::Local(Rc::new(parsed.set))
        }
        (None, Some(remote), None) => KeySource::Remote(compile_remote(&at("remote_jwks"), remote)?),
        (None, None, Some(native)) => {
            let key = native.payload_in_metadata;
            if key.trim().is_empty() {
                return Err(ConfigError::new(at("from_native_jwt_authn.payload_in_metadata"), "names the key jwt_authn stores the payload under"));
            }
            // The native filter finds the token (and removes it unless it forwards it).
            if p.from_headers.is_some() || p.forward {
                return Err(ConfigError::new(
                    at("from_native_jwt_authn"),
                    "the native jwt_authn filter reads the token: set `from_headers` and `forward` there",
                ));
            }
            KeySource::Native { payload_in_metadata: key }
        }
        _ => {
            return Err(ConfigError::new(
                format!("providers.{name}"),
                "set exactly one of `local_jwks`, `remote_jwks` or `from_native_jwt_authn`",
            ))
        }
    };
    let from_headers = match p.from_headers {
        None => vec![TokenLocation {
            header: "authorization".into(),
            value_prefix: "Bearer ".into(),
        }],
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(at("from_headers"), "must list at least one header"))
        }
        Some(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let header = h.name.to_ascii_lowercase();
                if !valid_header_name(&header) {
                    return Err(ConfigError::new(
                        at(&format!("from_headers[{i}].name")),
                        format!("{:?} is not a valid header name", h.name),
                    ));
                }
                Ok(TokenLocation {
                    header,
                    value_prefix: h.value_prefix.unwrap_or_default(),
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let mut claim_to_headers = Vec::with_capacity(p.claim_to_headers.len());
    for (i, c) in p.claim_to_headers.into_iter().enumerate() {
        let header_name = c.header_name.to_ascii_lowercase();
        if !valid_header_name(&header_name) || PROTECTED_HEADERS.contains(&header_name.as_str()) {
            return Err(ConfigError::new(
                at(&format!("claim_to_headers[{i}].header_name")),
                format!("{:?} cannot carry a claim", c.header_name),
            ));
        }
        if from_headers.iter().any(|l| l.header == header_name) {
            return Err(ConfigError::new(
                at(&format!("claim_to_headers[{i}].header_name")),
                format!("{header_name:?} is where tokens are read from"),
            ));
        }
        if c.claim_name.is_empty() {
            return Err(ConfigError::new(at(&format!("claim_to_headers[{i}].claim_name")), "is empty"));
        }
        claim_to_headers.push(ClaimToHeader {
            header_name,
            claim_name: c.claim_name,
        });
    }
    let clock_skew_seconds = p.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    if clock_skew_seconds > 600 {
        return Err(ConfigError::new(at("clock_skew_seconds"), "must be at most 600"));
    }
    Ok(Provider {
        name: name.to_string(),
        issuer,
        audiences,
        keys,
        from_headers,
        forward: p.forward,
        claim_to_headers,
        clock_skew_seconds,
        require_expiration: p.require_expiration.unwrap_or(true),
        tenant_claim: p.tenant_claim.unwrap_or_else(|| DEFAULT_TENANT_CLAIM.to_string()),
        revoked: match p.revoked {
            Some(raw) => Revocations::compile(&at("revoked"), raw)?,
            None => Revocations::default(),
        },
    })
}

fn compile_remote(at: &str, raw: RawRemoteJwks) -> Result<RemoteJwks, ConfigError> {
    let uri_at = format!("{at}.http_uri.uri");
    let uri = raw.http_uri.uri;
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| ConfigError::new(&uri_at, format!("{uri:?} is not an http:// or https:// URI")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority_ok = !authority.is_empty()
        && !authority.contains('@')
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if !authority_ok || path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ConfigError::new(&uri_at, format!("{uri:?} is not a valid URI")));
    }
    if raw.http_uri.cluster.trim().is_empty() {
        return Err(ConfigError::new(format!("{at}.http_uri.cluster"), "is required"));
    }
    let timeout = match raw.http_uri.timeout {
        Some(t) => parse_duration(&format!("{at}.http_uri.timeout"), &t)?,
        None => DEFAULT_FETCH_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err(ConfigError::new(format!("{at}.http_uri.timeout"), "must be positive"));
    }
    let cache_duration = match raw.cache_duration {
        Some(t) => parse_duration(&format!("{at}.cache_duration"), &t)?,
        None => DEFAULT_CACHE_DURATION,
    };
    if cache_duration < Duration::from_secs(1) {
        return Err(ConfigError::new(format!("{at}.cache_duration"), "must be at least 1s"));
    }
    let unavailable_status = raw.unavailable_status.unwrap_or(503);
    if ![401, 503].contains(&unavailable_status) {
        return Err(ConfigError::new(format!("{at}.unavailable_status"), "must be 503 (retry later, the default) or 401"));
    }
    Ok(RemoteJwks {
        unavailable_status,
        authority: authority.to_string(),
        path: path.to_string(),
        uri,
        cluster: raw.http_uri.cluster,
        timeout,
        cache_duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{local_config, TestKeys};
    use serde_json::{json, Value};

    fn parse(v: &Value) -> Result<JwtConfig, ConfigError> {
        JwtConfig::parse(v.to_string().as_bytes(), &|name| (name == "JWKS").then(|| TestKeys::new().jwks()))
    }

    fn base() -> Value {
        serde_json::from_str(&local_config(&TestKeys::new().jwks(), json!({}))).unwrap()
    }

    #[test]
    fn defaults_mirror_jwt_authn_with_safer_choices() {
        let cfg = parse(&base()).unwrap();
        let p = &cfg.providers[0];
        assert_eq!(p.from_headers, vec![TokenLocation { header: "authorization".into(), value_prefix: "Bearer ".into() }]);
        assert!(!p.forward);
        assert!(p.require_expiration);
        assert_eq!(p.clock_skew_seconds, 60);
        assert_eq!(cfg.mode, Mode::Enforce);
        assert_eq!(cfg.max_token_bytes, 8192);
        assert!(cfg.rule_for("/api/x").is_some_and(|r| r.requires.is_some()));
        assert!(cfg.rule_for("/public").is_some_and(|r| r.requires.is_none()));
        assert!(cfg.rule_for("/other").is_none());
    }

    #[test]
    fn remote_jwks_uri_is_split_for_the_cluster_call() {
        let mut v = base();
        v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks");
        v["providers"]["main"]["remote_jwks"] = json!({"http_uri": {"uri": "https://idp.example.com:8443/keys?v=2", "cluster": "idp", "timeout": "2s"}, "cache_duration": "30s"});
        let cfg = parse(&v).unwrap();
        let KeySource::Remote(r) = &cfg.providers[0].keys else { panic!("remote expected") };
        assert_eq!((r.authority.as_str(), r.path.as_str(), r.cluster.as_str()), ("idp.example.com:8443", "/keys?v=2", "idp"));
        assert_eq!((r.timeout, r.cache_duration), (Duration::from_secs(2), Duration::from_secs(30)));
        assert_eq!(r.unavailable_status, 503, "an IdP outage is not the caller's fault");
        v["providers"]["main"]["remote_jwks"]["unavailable_status"] = json!(401);
        let KeySource::Remote(r) = &parse(&v).unwrap().providers[0].keys else { panic!("remote expected") };
        assert_eq!(r.unavailable_status, 401);
        v["providers"]["main"]["remote_jwks"]["unavailable_status"] = json!(500);
        assert_eq!(parse(&v).unwrap_err().path, "providers.main.remote_jwks.unavailable_status");
    }

    #[test]
    fn jwks_from_the_vm_environment() {
        let mut v = base();
        v["providers"]["main"]["local_jwks"] = json!({"environment_variable": "JWKS"});
        assert!(parse(&v).is_ok());
        v["providers"]["main"]["local_jwks"] = json!({"environment_variable": "UNSET"});
        assert_eq!(parse(&v).unwrap_err().path, "providers.main.local_jwks.environment_variable");
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_field() {
        type Edit = fn(&mut Value);
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("unknown top-level field", |v| v["rulez"] = json!([]), "rulez"),
            ("misspelled provider field", |v| v["providers"]["main"]["isuer"] = json!("x"), "providers.main.isuer"),
            ("no issuer", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("issuer"); }, "providers.main.issuer"),
            ("blank issuer", |v| v["providers"]["main"]["issuer"] = json!(" "), "providers.main.issuer"),
            ("no audiences", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("audiences"); }, "providers.main.audiences"),
            ("empty audiences", |v| v["providers"]["main"]["audiences"] = json!([]), "providers.main.audiences"),
            ("empty audience", |v| v["providers"]["main"]["audiences"] = json!([""]), "providers.main.audiences"),
            ("no keys", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks"); }, "providers.main"),
            ("both key sources", |v| v["providers"]["main"]["remote_jwks"] = json!({"http_uri": {"uri": "https://a/b", "cluster": "c"}}), "providers.main"),
            ("bad jwks", |v| v["providers"]["main"]["local_jwks"] = json!({"inline_string": "{\"keys\": [{\"kty\": \"RSA\"}]}"}), "providers.main.local_jwks"),
            ("short hmac key", |v| v["providers"]["main"]["local_jwks"] = json!({"inline_string": "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2hvcnQ\"}]}"}), "providers.main.local_jwks"),
            ("no providers", |v| v["providers"] = json!({}), "providers"),
            ("no rules", |v| v["rules"] = json!([]), "rules"),
            ("relative match", |v| v["rules"][0]["match"] = json!({"prefix": "api"}), "rules[0].match"),
            ("regex match", |v| v["rules"][0]["match"] = json!({"safe_regex": ".*"}), "rules[0].match"),
            ("unknown provider", |v| v["rules"][1]["requires"] = json!({"provider_name": "nope"}), "rules[1].requires.provider_name"),
            ("empty requires_any", |v| v["rules"][1]["requires"] = json!({"requires_any": {"requirements": []}}), "rules[1].requires.requires_any"),
            ("allow_missing_or_failed is not offered", |v| v["rules"][1]["requires"] = json!({"allow_missing_or_failed": {}}), "rules[1].requires"),
            ("bad mode", |v| v["mode"] = json!("audit"), "mode"),
            ("claim into host header", |v| v["providers"]["main"]["claim_to_headers"] = json!([{"header_name": "Host", "claim_name": "sub"}]), "providers.main.claim_to_headers[0].header_name"),
            ("claim into token header", |v| v["providers"]["main"]["claim_to_headers"] = json!([{"header_name": "authorization", "claim_name": "sub"}]), "providers.main.claim_to_headers[0].header_name"),
            ("pseudo header", |v| v["providers"]["main"]["from_headers"] = json!([{"name": ":path"}]), "providers.main.from_headers[0].name"),
            ("skew too large", |v| v["providers"]["main"]["clock_skew_seconds"] = json!(3600), "providers.main.clock_skew_seconds"),
            ("token cap too small", |v| v["max_token_bytes"] = json!(10), "max_token_bytes"),
            ("wrong type", |v| v["providers"]["main"]["forward"] = json!("yes"), "providers.main.forward"),
            ("uri without scheme", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks"); v["providers"]["main"]["remote_jwks"] = json!({"http_uri": {"uri": "idp/jwks", "cluster": "c"}}); }, "providers.main.remote_jwks.http_uri.uri"),
            ("uri with userinfo", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks"); v["providers"]["main"]["remote_jwks"] = json!({"http_uri": {"uri": "https://u:p@idp/jwks", "cluster": "c"}}); }, "providers.main.remote_jwks.http_uri.uri"),
            ("bad timeout", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks"); v["providers"]["main"]["remote_jwks"] = json!({"http_uri": {"uri": "https://idp/jwks", "cluster": "c", "timeout": "5"}}); }, "providers.main.remote_jwks.http_uri.timeout"),
            ("native and local keys", |v| v["providers"]["main"]["from_native_jwt_authn"] = json!({"payload_in_metadata": "main"}), "providers.main"),
            ("native without a key", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks"); v["providers"]["main"]["from_native_jwt_authn"] = json!({"payload_in_metadata": " "}); }, "providers.main.from_native_jwt_authn.payload_in_metadata"),
            ("native with token headers", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks"); v["providers"]["main"]["from_native_jwt_authn"] = json!({"payload_in_metadata": "main"}); v["providers"]["main"]["from_headers"] = json!([{"name": "x-token"}]); }, "providers.main.from_native_jwt_authn"),
            ("tiny cache duration", |v| { v["providers"]["main"].as_object_mut().unwrap().remove("local_jwks"); v["providers"]["main"]["remote_jwks"] = json!({"http_uri": {"uri": "https://idp/jwks", "cluster": "c"}, "cache_duration": "0.1s"}); }, "providers.main.remote_jwks.cache_duration"),
        ];
        for (name, edit, path) in cases {
            let mut v = base();
            edit(&mut v);
            let err = parse(&v).err().unwrap_or_else(|| panic!("{name}: accepted"));
            assert!(err.path.starts_with(path), "{name}: {err}");
        }
    }
}
