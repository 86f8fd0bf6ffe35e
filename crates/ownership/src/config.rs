//! The ownership filter's configuration, parsed strictly and compiled once.

use meshward_core::config::{body_limit, check_name, parse_json, ConfigError, Unmatched};
use meshward_core::route::{RawRouteMatch, RouteMatch};
use meshward_core::caller::Requirement;
use meshward_core::workload::SpiffeIds;
use meshward_core::Mode;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    unmatched: Unmatched,
    bypass: Option<RawBypass>,
    max_body_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    #[serde(rename = "match")]
    match_: RawRouteMatch,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: Vec<RawClaimRule>,
    #[serde(default)]
    owner: Vec<RawOwnerCheck>,
    bypass: Option<RawBypass>,
    #[serde(default)]
    workloads: Vec<String>,
    #[serde(default = "yes")]
    require_user: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawClaimRule {
    claim: String,
    one_of: Vec<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawBypass {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: Vec<RawClaimRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwnerCheck {
    path_param: Option<String>,
    query_param: Option<String>,
    header: Option<String>,
    body_field: Option<String>,
    response_field: Option<String>,
    claim: String,
    reason: Option<OwnerReason>,
    deny_status: Option<u16>,
    required: Option<bool>,
}

/// The reason a failed ownership comparison reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerReason {
    TenantBoundary,
    NotOwner,
}

/// A claim that must have one of the listed values (a string claim, or an array holding one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub claim: String,
    pub one_of: Vec<String>,
}

/// Principals that skip object-level checks (admins, support): any listed scope or claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bypass {
    pub scopes: Vec<String>,
    pub claims: Vec<ClaimRule>,
}

/// Where the value compared with the principal's claim comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    PathParam(String),
    QueryParam(String),
    Header(String),
    /// JSON pointer into the request body (writes).
    BodyField(String),
    /// JSON pointer into the response body; `*` segments walk every element of an array.
    ResponseField(String),
}

/// "The value at `location` must equal the principal's `claim`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerCheck {
    pub location: Location,
    pub claim: String,
    pub reason: OwnerReason,
    /// Answer 404 (hide the object) instead of 403.
    pub hide: bool,
    /// For body and response fields: an absent field fails the check.
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Option<String>,
    pub route: RouteMatch,
    pub public: bool,
    pub claims: Vec<ClaimRule>,
    pub owner: Vec<OwnerCheck>,
    pub bypass: Bypass,
    /// The calling workload, the user and their `scopes` (the rule's `workloads`,
    /// `require_user`, `scopes`).
    pub access: Requirement,
}

impl Rule {
    pub fn needs_body(&self) -> bool {
        self.owner.iter().any(|c| matches!(c.location, Location::BodyField(_)))
    }

    pub fn needs_response(&self) -> bool {
        self.owner.iter().any(|c| matches!(c.location, Location::ResponseField(_)))
    }
}

#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    pub mode: Mode,
    pub unmatched: Unmatched,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub rules: Vec<Rule>,
}

fn compile_claims(at: &str, raw: Vec<RawClaimRule>) -> Result<Vec<ClaimRule>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| {
            if c.claim.is_empty() || c.one_of.is_empty() {
                return Err(ConfigError::new(format!("{at}[{i}]"), "needs a claim and at least one value in one_of"));
            }
            Ok(ClaimRule { claim: c.claim, one_of: c.one_of })
        })
        .collect()
}

fn compile_bypass(at: &str, raw: Option<RawBypass>) -> Result<Bypass, ConfigError> {
    let Some(raw) = raw else { return Ok(Bypass::default()) };
    if raw.scopes.is_empty() && raw.claims.is_empty() {
        return Err(ConfigError::new(at, "names no scope or claim"));
    }
    Ok(Bypass { scopes: raw.scopes, claims: compile_claims(&format!("{at}.claims"), raw.claims)? })
}

fn valid_pointer(p: &str) -> bool {
    p.starts_with('/') && !p.ends_with('/')
}

impl OwnershipConfig {
    pub fn parse(json: &[u8]) -> Result<OwnershipConfig, ConfigError> {
        let raw: RawConfig = parse_json(json)?;
        if raw.rules.is_empty() {
            return Err(ConfigError::new("rules", "at least one rule is required"));
        }
        let global_bypass = compile_bypass("bypass", raw.bypass)?;
        let max_body_bytes = body_limit("max_body_bytes", raw.max_body_bytes)?;
        let max_response_bytes = body_limit("max_response_bytes", raw.max_response_bytes)?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].{field}");
            if let Some(name) = &r.name {
                check_name(&at("name"), name)?;
            }
            let route = RouteMatch::compile(r.match_).map_err(|e| ConfigError::new(at("match"), e))?;
            if r.public && (!r.scopes.is_empty() || !r.claims.is_empty() || !r.owner.is_empty() || r.bypass.is_some()) {
                return Err(ConfigError::new(at("public"), "a public rule cannot also require scopes, claims or owners"));
            }
            let workloads = SpiffeIds::new(r.workloads).map_err(|e| ConfigError::new(at("workloads"), e))?;
            if !r.require_user {
                if workloads.is_empty() {
                    return Err(ConfigError::new(at("require_user"), "a rule without a user needs `workloads` (or is `public`)"));
                }
                if !r.scopes.is_empty() || !r.claims.is_empty() || !r.owner.is_empty() || r.bypass.is_some() {
                    return Err(ConfigError::new(at("require_user"), "scopes, claims, owners and bypass are read from the user's token"));
                }
            }
            if r.public && !workloads.is_empty() {
                return Err(ConfigError::new(at("public"), "a public rule cannot also require workloads"));
            }
            let mut owner = Vec::with_capacity(r.owner.len());
            for (j, o) in r.owner.into_iter().enumerate() {
                let oat = format!("rules[{i}].owner[{j}]");
                let location = match (o.path_param, o.query_param, o.header, o.body_field, o.response_field) {
                    (Some(p), None, None, None, None) => {
                        if !route.has_param(&p) {
                            return Err(ConfigError::new(format!("{oat}.path_param"), format!("{{{p}}} is not a parameter of the rule's template")));
                        }
                        Location::PathParam(p)
                    }
                    (None, Some(q), None, None, None) => Location::QueryParam(q),
                    (None, None, Some(h), None, None) => Location::Header(h.to_ascii_lowercase()),
                    (None, None, None, Some(b), None) if valid_pointer(&b) => Location::BodyField(b),
                    (None, None, None, None, Some(b)) if valid_pointer(&b) => Location::ResponseField(b),
                    (None, None, None, Some(_), None) | (None, None, None, None, Some(_)) => {
                        return Err(ConfigError::new(&oat, "fields are JSON pointers such as \"/tenant_id\""))
                    }
                    _ => {
                        return Err(ConfigError::new(
                            &oat,
                            "set exactly one of `path_param`, `query_param`, `header`, `body_field`, `response_field`",
                        ))
                    }
                };
                if o.claim.is_empty() {
                    return Err(ConfigError::new(format!("{oat}.claim"), "is empty"));
                }
                if o.deny_status.is_some() && matches!(location, Location::ResponseField(_)) {
                    return Err(ConfigError::new(
                        format!("{oat}.deny_status"),
                        "does not apply to response checks: the status is already sent, the stream is reset",
                    ));
                }
                let hide = match o.deny_status {
                    None | Some(403) => false,
                    Some(404) => true,
                    Some(other) => return Err(ConfigError::new(format!("{oat}.deny_status"), format!("{other} is not 403 or 404"))),
                };
                let reason = o.reason.unwrap_or(if o.claim == "tenant" { OwnerReason::TenantBoundary } else { OwnerReason::NotOwner });
                owner.push(OwnerCheck { location, claim: o.claim, reason, hide, required: o.required.unwrap_or(true) });
            }
            let bypass = match r.bypass {
                Some(b) => compile_bypass(&at("bypass"), Some(b))?,
                None => global_bypass.clone(),
            };
            rules.push(Rule {
                name: r.name,
                route,
                public: r.public,
                claims: compile_claims(&at("claims"), r.claims)?,
                owner,
                bypass,
                access: Requirement { workloads, require_user: r.require_user, scopes: r.scopes },
            });
        }
        Ok(OwnershipConfig { mode: raw.mode, unmatched: raw.unmatched, max_body_bytes, max_response_bytes, rules })
    }
}
