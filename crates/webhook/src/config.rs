//! The webhook filter's configuration, parsed strictly and compiled once.

use ct_codecs::{Base64, Decoder, Hex};
use meshward_core::config::{body_limit, check_name, parse_json, valid_header_name, ConfigError, Unmatched};
use meshward_core::fleet::{FailureMode, FleetService, RawFleetService};
use meshward_core::route::PathMatch;
use meshward_core::Mode;
use serde::Deserialize;

const DEFAULT_TOLERANCE_SECONDS: u64 = 300;
const DEFAULT_REPLAY_TTL_SECONDS: u64 = 24 * 3600;
const DEFAULT_REPLAY_CACHE_ENTRIES: usize = 16 * 1024;
/// Senders time out after 10–30 s; a delivery still unanswered after a minute is not coming back.
const DEFAULT_IN_FLIGHT_SECONDS: u64 = 60;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    unmatched: Unmatched,
    endpoints: Vec<RawEndpoint>,
    fleet: Option<RawFleetService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    #[serde(rename = "match")]
    match_: PathMatch,
    scheme: SchemeName,
    secrets: Vec<RawSecret>,
    tolerance_seconds: Option<u64>,
    max_body_bytes: Option<usize>,
    replay_protection: Option<bool>,
    replay_ttl_seconds: Option<u64>,
    replay_cache_entries: Option<usize>,
    accepted_statuses: Option<Vec<String>>,
    in_flight_seconds: Option<u64>,
    hmac: Option<RawHmac>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SchemeName {
    StandardWebhooks,
    Stripe,
    Github,
    Hmac,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    inline_string: Option<String>,
    environment_variable: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHmac {
    signature_header: String,
    #[serde(default)]
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    #[serde(default)]
    value_prefix: String,
    timestamp_header: Option<String>,
    id_header: Option<String>,
    signed_content: Option<String>,
    #[serde(default)]
    secret_encoding: SecretEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SecretEncoding {
    #[default]
    Utf8,
    Base64,
    Hex,
}

/// A verification key. Debug output never shows key material.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Hmac(Vec<u8>),
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Hmac(_) => f.write_str("Secret::Hmac(..)"),
            Secret::Ed25519(_) => f.write_str("Secret::Ed25519(..)"),
        }
    }
}

/// One piece of the signed content, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Timestamp,
    Id,
    Body,
}

/// The generic HMAC scheme's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    pub signature_header: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub value_prefix: String,
    pub timestamp_header: Option<String>,
    pub id_header: Option<String>,
    pub signed_content: Vec<Part>,
}

/// How deliveries are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `webhook-id` / `webhook-timestamp` / `webhook-signature` (or `svix-*`).
    StandardWebhooks,
    /// `Stripe-Signature: t=...,v1=...`.
    Stripe,
    /// `X-Hub-Signature-256`, delivery id `X-GitHub-Delivery`, no timestamp.
    Github,
    Hmac(HmacScheme),
}

/// One webhook receiver.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub path_match: PathMatch,
    pub scheme: Scheme,
    pub secrets: Vec<Secret>,
    pub tolerance_seconds: u64,
    pub max_body_bytes: usize,
    pub replay_protection: bool,
    /// How long ids are remembered when the scheme has no timestamp.
    pub replay_ttl_seconds: u64,
    /// Delivery ids this endpoint's replay cache holds at most.
    pub replay_cache_entries: usize,
    /// Upstream statuses that mean "accepted": only then is a delivery remembered as seen.
    pub accepted_statuses: Vec<(u16, u16)>,
    /// How long a delivery being handled blocks its duplicates if its answer never comes.
    pub in_flight_seconds: u64,
}

impl Endpoint {
    pub fn accepts(&self, status: u16) -> bool {
        self.accepted_statuses.iter().any(|(low, high)| (*low..=*high).contains(&status))
    }
}

/// `"200-299"` or `"202"`: an inclusive range of statuses.
fn status_range(path: &str, text: &str) -> Result<(u16, u16), ConfigError> {
    let bad = || ConfigError::new(path, format!("{text:?} is not a status (\"202\") or a range (\"200-299\")"));
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
        return Err(bad());
    }
    Ok((low, high))
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub mode: Mode,
    pub unmatched: Unmatched,
    pub endpoints: Vec<Endpoint>,
    /// The fleet engine holding the seen-set every replica shares; `None`: this sidecar only.
    pub fleet: Option<FleetService>,
}

impl WebhookConfig {
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<WebhookConfig, ConfigError> {
        let raw: RawConfig = parse_json(json)?;
        if raw.endpoints.is_empty() {
            return Err(ConfigError::new("endpoints", "at least one endpoint is required"));
        }
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.endpoints.len());
        for (i, e) in raw.endpoints.into_iter().enumerate() {
            let at = |field: &str| format!("endpoints[{i}].{field}");
            check_name(&at("name"), &e.name)?;
            if endpoints.iter().any(|x| x.name == e.name) {
                return Err(ConfigError::new(at("name"), format!("{:?} is used twice", e.name)));
            }
            match &e.match_ {
                PathMatch::Prefix(p) | PathMatch::Path(p) if !p.starts_with('/') => {
                    return Err(ConfigError::new(at("match"), "must start with '/'"))
                }
                _ => {}
            }
            let hmac_secret_encoding = e.hmac.as_ref().map(|h| h.secret_encoding).unwrap_or_default();
            let scheme = match (e.scheme, e.hmac) {
                (SchemeName::StandardWebhooks, None) => Scheme::StandardWebhooks,
                (SchemeName::Stripe, None) => Scheme::Stripe,
                (SchemeName::Github, None) => Scheme::Github,
                (SchemeName::Hmac, Some(h)) => Scheme::Hmac(compile_hmac(&at("hmac"), &h)?),
                (SchemeName::Hmac, None) => return Err(ConfigError::new(at("hmac"), "is required for scheme \"hmac\"")),
                (_, Some(_)) => return Err(ConfigError::new(at("hmac"), "is only for scheme \"hmac\"")),
            };
            if e.secrets.is_empty() {
                return Err(ConfigError::new(at("secrets"), "at least one secret is required"));
            }
            let mut secrets = Vec::with_capacity(e.secrets.len());
            for (j, s) in e.secrets.iter().enumerate() {
                let sat = at(&format!("secrets[{j}]"));
                let text = match (&s.inline_string, &s.environment_variable) {
                    (Some(t), None) => t.clone(),
                    (None, Some(var)) => env(var).ok_or_else(|| {
                        ConfigError::new(format!("{sat}.environment_variable"), format!("environment variable {var:?} is not set in the VM"))
                    })?,
                    _ => return Err(ConfigError::new(&sat, "set exactly one of `inline_string` or `environment_variable`")),
                };
                secrets.push(compile_secret(&sat, &scheme, &text, hmac_secret_encoding)?);
            }
            let tolerance_seconds = e.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS);
            if !(1..=3600).contains(&tolerance_seconds) {
                return Err(ConfigError::new(at("tolerance_seconds"), "must be between 1 and 3600"));
            }
            let max_body_bytes = body_limit(&at("max_body_bytes"), e.max_body_bytes)?;
            let replay_ttl_seconds = e.replay_ttl_seconds.unwrap_or(DEFAULT_REPLAY_TTL_SECONDS);
            if !(1..=30 * 24 * 3600).contains(&replay_ttl_seconds) {
                return Err(ConfigError::new(at("replay_ttl_seconds"), "must be between 1 and 2592000"));
            }
            let entries = e.replay_cache_entries.unwrap_or(DEFAULT_REPLAY_CACHE_ENTRIES);
            if !(16..=1 << 20).contains(&entries) {
                return Err(ConfigError::new(at("replay_cache_entries"), "must be between 16 and 1048576"));
            }
            let accepted_statuses = match e.accepted_statuses {
                None => vec![(200, 299)],
                Some(list) if list.is_empty() => return Err(ConfigError::new(at("accepted_statuses"), "name at least one status")),
                Some(list) => list
                    .iter()
                    .enumerate()
                    .map(|(j, t)| status_range(&at(&format!("accepted_statuses[{j}]")), t))
                    .collect::<Result<_, _>>()?,
            };
            let in_flight_seconds = e.in_flight_seconds.unwrap_or(DEFAULT_IN_FLIGHT_SECONDS);
            if !(1..=3600).contains(&in_flight_seconds) {
                return Err(ConfigError::new(at("in_flight_seconds"), "must be between 1 and 3600"));
            }
            endpoints.push(Endpoint {
                name: e.name,
                path_match: e.match_,
                scheme,
                secrets,
                tolerance_seconds,
                max_body_bytes,
                replay_protection: e.replay_protection.unwrap_or(true),
                replay_ttl_seconds,
                replay_cache_entries: entries,
                accepted_statuses,
                in_flight_seconds,
            });
        }
        // Unreachable engine: refuse (503 + Retry-After); senders retry, nothing passes unchecked.
        let fleet = raw.fleet.map(|f| FleetService::compile("fleet", f, FailureMode::Deny)).transpose()?;
        Ok(WebhookConfig {
            mode: raw.mode,
            unmatched: raw.unmatched,
            endpoints,
            fleet,
        })
    }
}

fn compile_hmac(at: &str, h: &RawHmac) -> Result<HmacScheme, ConfigError> {
    let header = |field: &str, name: &str| -> Result<String, ConfigError> {
        let lower = name.to_ascii_lowercase();
        if valid_header_name(&lower) {
            Ok(lower)
        } else {
            Err(ConfigError::new(format!("{at}.{field}"), format!("{name:?} is not a valid header name")))
        }
    };
    let signature_header = header("signature_header", &h.signature_header)?;
    let timestamp_header = h.timestamp_header.as_deref().map(|n| header("timestamp_header", n)).transpose()?;
    let id_header = h.id_header.as_deref().map(|n| header("id_header", n)).transpose()?;
    let template = h.signed_content.as_deref().unwrap_or("{body}");
    let content_at = format!("{at}.signed_content");
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| ConfigError::new(&content_at, "has an unclosed '{'"))?;
        let part = match &rest[open + 1..open + close] {
            "body" => Part::Body,
            "timestamp" if timestamp_header.is_some() => Part::Timestamp,
            "id" if id_header.is_some() => Part::Id,
            "timestamp" | "id" => {
                return Err(ConfigError::new(&content_at, "uses {timestamp} or {id} without the matching header"))
            }
            other => return Err(ConfigError::new(&content_at, format!("unknown placeholder {{{other}}}"))),
        };
        parts.push(part);
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    if parts.iter().filter(|p| **p == Part::Body).count() != 1 {
        return Err(ConfigError::new(&content_at, "must contain {body} exactly once"));
    }
    Ok(HmacScheme {
        signature_header,
        algorithm: h.algorithm,
        encoding: h.encoding,
        value_prefix: h.value_prefix.clone(),
        timestamp_header,
        id_header,
        signed_content: parts,
    })
}

fn compile_secret(at: &str, scheme: &Scheme, text: &str, encoding: SecretEncoding) -> Result<Secret, ConfigError> {
    let bad = |why: &str| ConfigError::new(at, why.to_string());
    let secret = match scheme {
        Scheme::StandardWebhooks => {
            if let Some(b64) = text.strip_prefix("whsec_") {
                Secret::Hmac(Base64::decode_to_vec(b64, None).map_err(|_| bad("whsec_ secret is not base64"))?)
            } else if let Some(b64) = text.strip_prefix("whpk_") {
                let key = Base64::decode_to_vec(b64, None).map_err(|_| bad("whpk_ key is not base64"))?;
                Secret::Ed25519(key.try_into().map_err(|_| bad("whpk_ key must be 32 bytes"))?)
            } else {
                return Err(bad("Standard Webhooks secrets start with whsec_ (HMAC) or whpk_ (Ed25519 public key)"));
            }
        }
        Scheme::Stripe | Scheme::Github => Secret::Hmac(text.as_bytes().to_vec()),
        Scheme::Hmac(_) => Secret::Hmac(match encoding {
            SecretEncoding::Utf8 => text.as_bytes().to_vec(),
            SecretEncoding::Base64 => Base64::decode_to_vec(text, None).map_err(|_| bad("secret is not base64"))?,
            SecretEncoding::Hex => Hex::decode_to_vec(text, None).map_err(|_| bad("secret is not hex"))?,
        }),
    };
    match &secret {
        Secret::Hmac(k) if k.len() < 16 => Err(bad("HMAC secret must be at least 16 bytes")),
        _ => Ok(secret),
    }
}
