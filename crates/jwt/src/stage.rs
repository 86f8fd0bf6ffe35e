//! The JWT policy as a [`Policy`] / [`Stage`]: per-VM key caches and JWKS fetching, and the
//! per-request walk (path, rule, [`authenticate`], publishing the principal).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use meshward_core::clock::unix_secs;
use meshward_core::route::canonical_path;
use meshward_core::{config::ConfigError, Denial, DenialKind, Mode, Policy, RequestState, Stage, Step, PRINCIPAL_PROPERTY};
use meshward_host::{Host, HostError, HttpCall, HttpCallResponse, LogLevel};

use crate::authn::{authenticate, Authenticated, Inputs, Outcome};
use crate::cache::TokenCache;
use crate::config::{JwtConfig, KeySource, RemoteJwks};
use crate::jwks::{parse_jwks, KeySet};
use crate::verify::claim_header_value;

/// How often the root context checks whether a remote key set is due for a fetch.
pub const TICK_PERIOD: Duration = Duration::from_secs(1);
/// At most one fetch triggered by requests (unknown `kid`, no keys yet) per provider and VM
/// in this many seconds, so a flood of bad tokens cannot become a flood of JWKS fetches.
pub const ON_DEMAND_REFRESH_INTERVAL_SECS: u64 = 30;
/// Longest wait between retries of a failing scheduled fetch.
pub const MAX_RETRY_BACKOFF_SECS: u64 = 60;

/// Key-cache state of one provider in one VM.
#[derive(Debug, Default)]
struct ProviderKeys {
    set: Option<Rc<KeySet>>,
    next_fetch_at: u64,
    failures: u32,
    scheduled_in_flight: bool,
    on_demand_in_flight: bool,
    last_on_demand_at: Option<u64>,
    /// Bumped on every new key set, so cached verifications against old keys stop counting.
    generation: u64,
}

/// The JWT filter's compiled configuration plus its per-VM key caches.
#[derive(Debug)]
pub struct JwtPolicy {
    pub config: JwtConfig,
    keys: RefCell<Vec<ProviderKeys>>,
    /// Scheduled fetches in flight: (call token, provider index).
    scheduled: RefCell<Vec<(u32, usize)>>,
    cache: RefCell<TokenCache>,
}

impl JwtPolicy {
    /// Builds the policy from a compiled configuration; local key sets are ready at once.
    pub fn new(config: JwtConfig) -> Self {
        let keys = config
            .providers
            .iter()
            .map(|p| ProviderKeys {
                set: match &p.keys {
                    KeySource::Local(set) => Some(Rc::clone(set)),
                    KeySource::Remote(_) => None,
                },
                ..ProviderKeys::default()
            })
            .collect();
        JwtPolicy {
            cache: RefCell::new(TokenCache::new(config.token_cache_size)),
            config,
            keys: RefCell::new(keys),
            scheduled: RefCell::new(Vec::new()),
        }
    }

    fn remote(&self, index: usize) -> Option<&RemoteJwks> {
        match &self.config.providers.get(index)?.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Local(_) => None,
        }
    }

    /// The provider's current key set.
    pub fn key_set(&self, index: usize) -> Option<Rc<KeySet>> {
        self.keys.borrow().get(index).and_then(|k| k.set.clone())
    }

    fn generation(&self, index: usize) -> u64 {
        self.keys.borrow().get(index).map(|k| k.generation).unwrap_or(0)
    }

    fn may_refresh_on_demand(&self, index: usize, now: u64) -> bool {
        self.keys.borrow().get(index).is_some_and(|k| {
            !k.on_demand_in_flight
                && k.last_on_demand_at
                    .is_none_or(|t| now.saturating_sub(t) >= ON_DEMAND_REFRESH_INTERVAL_SECS)
        })
    }

    fn dispatch_fetch(&self, host: &mut dyn Host, index: usize) -> Result<u32, HostError> {
        let remote = self
            .remote(index)
            .ok_or_else(|| HostError::Refused("provider has no remote_jwks".into()))?;
        host.dispatch_http_call(&HttpCall {
            cluster: &remote.cluster,
            method: "GET",
            authority: &remote.authority,
            path: &remote.path,
            headers: vec![("accept", "application/json")],
            body: None,
            timeout: remote.timeout,
        })
    }

    /// Applies a fetched key set: replaces the cache on success, keeps the last good set on
    /// failure and schedules a retry.
    fn apply_fetch(&self, host: &mut dyn Host, index: usize, response: &HttpCallResponse) {
        let now = unix_secs(host);
        let Some(remote) = self.remote(index) else { return };
        let name = self.config.providers.get(index).map(|p| p.name.as_str()).unwrap_or("?");
        let result = match response.status {
            Some(200) => parse_jwks(&response.body, false).map_err(|e| e.to_string()),
            Some(status) => Err(format!("HTTP status {status}")),
            None => Err("no response (connection failed or timed out)".to_string()),
        };
        let mut keys = self.keys.borrow_mut();
        let Some(state) = keys.get_mut(index) else { return };
        match result {
            Ok(parsed) => {
                state.set = Some(Rc::new(parsed.set));
                state.generation = state.generation.wrapping_add(1);
                state.failures = 0;
                state.next_fetch_at = now.saturating_add(remote.cache_duration.as_secs());
                drop(keys);
                host.increment_counter("meshward_jwt_jwks_fetch_ok", 1);
                host.log(LogLevel::Info, &format!("meshward_jwt: provider {name}: fetched JWKS from {}", remote.uri));
                for note in parsed.skipped {
                    host.log(LogLevel::Warn, &format!("meshward_jwt: provider {name}: skipped {note}"));
                }
            }
            Err(why) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = 1u64
                    .checked_shl(state.failures.saturating_sub(1))
                    .unwrap_or(u64::MAX)
                    .min(MAX_RETRY_BACKOFF_SECS)
                    .min(remote.cache_duration.as_secs().max(1));
                state.next_fetch_at = now.saturating_add(backoff);
                let kept = if state.set.is_some() { "keeping the last good key set" } else { "no keys yet: requests are denied" };
                drop(keys);
                host.increment_counter("meshward_jwt_jwks_fetch_failed", 1);
                host.log(
                    LogLevel::Warn,
                    &format!("meshward_jwt: provider {name}: JWKS fetch from {} failed: {why}; {kept}; retry in {backoff}s", remote.uri),
                );
            }
        }
    }

    fn start_scheduled_fetches(&self, host: &mut dyn Host) {
        let now = unix_secs(host);
        for index in 0..self.config.providers.len() {
            let due = self.remote(index).is_some()
                && self
                    .keys
                    .borrow()
                    .get(index)
                    .is_some_and(|k| !k.scheduled_in_flight && now >= k.next_fetch_at);
            if !due {
                continue;
            }
            match self.dispatch_fetch(host, index) {
                Ok(token) => {
                    if let Some(k) = self.keys.borrow_mut().get_mut(index) {
                        k.scheduled_in_flight = true;
                    }
                    self.scheduled.borrow_mut().push((token, index));
                }
                Err(e) => self.apply_fetch(host, index, &HttpCallResponse {
                    status: None,
                    body: e.to_string().into_bytes(),
                    ..HttpCallResponse::default()
                }),
            }
        }
    }
}

impl Policy for JwtPolicy {
    const NAME: &'static str = "jwt";
    type Stage = JwtStage;

    fn configure(config: &[u8], host: &dyn Host) -> Result<Self, ConfigError> {
        JwtConfig::parse(config, &|name| host.env_var(name)).map(JwtPolicy::new)
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn start(policy: &Rc<Self>, host: &mut dyn Host) {
        if policy.config.providers.iter().any(|p| matches!(p.keys, KeySource::Remote(_))) {
            host.set_tick_period(TICK_PERIOD);
            policy.start_scheduled_fetches(host);
        }
    }

    fn on_tick(policy: &Rc<Self>, host: &mut dyn Host) {
        policy.start_scheduled_fetches(host);
    }

    fn on_http_call_response(policy: &Rc<Self>, host: &mut dyn Host, token: u32, response: HttpCallResponse) {
        let index = {
            let mut scheduled = policy.scheduled.borrow_mut();
            let Some(pos) = scheduled.iter().position(|(t, _)| *t == token) else { return };
            scheduled.remove(pos).1
        };
        if let Some(k) = policy.keys.borrow_mut().get_mut(index) {
            k.scheduled_in_flight = false;
        }
        policy.apply_fetch(host, index, &response);
    }

    fn new_stage(policy: &Rc<Self>) -> JwtStage {
        JwtStage {
            policy: Rc::clone(policy),
            rule: None,
            refresh_refused: Vec::new(),
            pending: None,
        }
    }
}

/// One request's walk through the JWT policy.
#[derive(Debug)]
pub struct JwtStage {
    policy: Rc<JwtPolicy>,
    /// Index of the rule that covers the request.
    rule: Option<usize>,
    /// Providers whose keys may not be fetched again for this request.
    refresh_refused: Vec<usize>,
    /// The on-demand fetch this request waits for: (call token, provider index).
    pending: Option<(u32, usize)>,
}

impl JwtStage {
    /// Runs [`authenticate`] until it decides, fetching keys on demand at most once per provider.
    fn decide(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        let Some(requirement) = self
            .rule
            .and_then(|i| policy.config.rules.get(i))
            .and_then(|r| r.requires.as_ref())
        else {
            return Step::Continue;
        };
        loop {
            let now = unix_secs(host);
            let outcome = {
                let host_ref: &dyn Host = host;
                let refused = &self.refresh_refused;
                authenticate(
                    &policy.config,
                    requirement,
                    &Inputs {
                        header: &|name| host_ref.request_header(name),
                        keys: &|i| policy.key_set(i),
                        may_refresh: &|i| !refused.contains(&i) && policy.may_refresh_on_demand(i, now),
                        cached: &|i, token| policy.cache.borrow().get(i, policy.generation(i), token),
                        remember: &|i, token, principal| {
                            policy.cache.borrow_mut().insert(i, policy.generation(i), token, principal)
                        },
                        now,
                    },
                )
            };
            match outcome {
                Outcome::Allowed(authenticated) => {
                    if let Some(a) = authenticated {
                        self.admit(host, request, a);
                    }
                    return Step::Continue;
                }
                Outcome::Denied(e) => return Step::Deny(e.denial()),
                Outcome::NeedKeys(index) => {
                    self.refresh_refused.push(index);
                    if let Ok(token) = policy.dispatch_fetch(host, index) {
                        if let Some(k) = policy.keys.borrow_mut().get_mut(index) {
                            k.on_demand_in_flight = true;
                            k.last_on_demand_at = Some(now);
                        }
                        self.pending = Some((token, index));
                        return Step::Pause;
                    }
                }
            }
        }
    }

    /// Publishes a verified principal: filter state, opted-in claim headers, token removal.
    fn admit(&self, host: &mut dyn Host, request: &mut RequestState, a: Authenticated) {
        let Some(provider) = self.policy.config.providers.get(a.provider) else { return };
        match serde_json::to_vec(&a.principal) {
            Ok(json) => {
                if let Err(e) = host.set_property(&[PRINCIPAL_PROPERTY], &json) {
                    // Later filters then find no principal and deny: still fail closed.
                    host.log(LogLevel::Error, &format!("meshward_jwt: cannot publish principal: {e}"));
                }
            }
            Err(e) => host.log(LogLevel::Error, &format!("meshward_jwt: cannot encode principal: {e}")),
        }
        for c in &provider.claim_to_headers {
            if let Some(value) = a.principal.claim(&c.claim_name).and_then(claim_header_value) {
                host.set_request_header(&c.header_name, Some(&value));
            }
        }
        if !provider.forward {
            host.set_request_header(&a.token_header, None);
        }
        request.principal = Some(a.principal);
    }
}

impl Stage for JwtStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        // Claim headers are only ever set by meshward: drop whatever the client sent.
        for provider in &policy.config.providers {
            for c in &provider.claim_to_headers {
                host.set_request_header(&c.header_name, None);
            }
        }
        let canonical = match canonical_path(&request.path) {
            Ok(p) => p,
            Err(e) => return Step::Deny(Denial::new(DenialKind::BadRequest, "invalid_path", e.to_string())),
        };
        self.rule = policy.config.rules.iter().position(|r| r.path_match.matches(&canonical));
        if self.rule.is_none() {
            return Step::Deny(Denial::new(
                DenialKind::Forbidden { challenge: false },
                "route_not_covered",
                "no JWT rule covers this route",
            ));
        }
        self.decide(host, request)
    }

    fn on_http_call_response(
        &mut self,
        host: &mut dyn Host,
        request: &mut RequestState,
        token: u32,
        response: HttpCallResponse,
    ) -> Step {
        match self.pending {
            Some((pending, index)) if pending == token => {
                self.pending = None;
                if let Some(k) = self.policy.keys.borrow_mut().get_mut(index) {
                    k.on_demand_in_flight = false;
                }
                self.policy.apply_fetch(host, index, &response);
                self.decide(host, request)
            }
            // Not the call this request waits for: keep waiting.
            _ => Step::Pause,
        }
    }
}
