//! The JWT policy as a [`Policy`] / [`Stage`]: key sets (remote ones fetched once per sidecar
//! and shared by its workers through [`SharedJwks`]), and the per-request walk (path, rule,
//! [`authenticate`], publishing the principal).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use meshward_core::clock::unix_secs;
use meshward_core::{config::ConfigError, Denial, DenialKind, Mode, Policy, RequestState, Stage, Step, PRINCIPAL_PROPERTY};
use meshward_core::stats::{count, Counter};
use meshward_host::{Host, HostError, HttpCall, HttpCallResponse, LogLevel};

use crate::authn::{authenticate, Authenticated, Inputs, Outcome};
use crate::cache::{RefusedTokens, TokenCache};
use crate::config::{JwtConfig, KeySource, RemoteJwks};
use crate::jwks::{parse_jwks, KeySet};
use crate::native::{payload_from_metadata, METADATA_PROPERTY};
use crate::shared_jwks::SharedJwks;
use crate::verify::claim_header_value;

/// How often the root context checks whether a remote key set is due for a fetch.
pub const TICK_PERIOD: Duration = Duration::from_secs(1);
/// At most one fetch triggered by requests (unknown `kid`, no keys yet) per provider and
/// sidecar in this many seconds, so a flood of bad tokens cannot become a flood of JWKS fetches.
pub const ON_DEMAND_REFRESH_INTERVAL_SECS: u64 = 30;
/// Longest wait between retries of a failing scheduled fetch.
pub const MAX_RETRY_BACKOFF_SECS: u64 = 60;

/// A scheduled fetch's lease lasts its timeout plus this, then another worker may take over.
const LEASE_SLACK_SECS: u64 = 2;

/// Until when a fetch started at `now` may be in flight.
fn lease_end(remote: &RemoteJwks, now: u64) -> u64 {
    now.saturating_add(remote.timeout.as_secs()).saturating_add(LEASE_SLACK_SECS)
}

/// Key-cache state of one provider in one VM (the schedule is shared: [`SharedJwks`]).
#[derive(Debug, Default)]
struct ProviderKeys {
    set: Option<Rc<KeySet>>,
    /// The shared record's sequence this VM's `set` came from.
    sequence: u64,
    /// A scheduled fetch of this VM is in flight until then (its lease; a lost call expires).
    scheduled_until: u64,
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
    /// Per provider: where its remote key set is shared with the other workers.
    shared: Vec<Option<SharedJwks>>,
    /// Scheduled fetches in flight: (call token, provider index, under the shared lease).
    scheduled: RefCell<Vec<(u32, usize, bool)>>,
    cache: RefCell<TokenCache>,
    /// Tokens whose signature failed, refused again without verifying (same size as `cache`).
    refused: RefCell<RefusedTokens>,
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
                    KeySource::Remote(_) | KeySource::Native { .. } => None,
                },
                ..ProviderKeys::default()
            })
            .collect();
        let shared = config
            .providers
            .iter()
            .map(|p| match &p.keys {
                KeySource::Remote(r) => Some(SharedJwks::new(&p.name, &r.uri)),
                KeySource::Local(_) | KeySource::Native { .. } => None,
            })
            .collect();
        JwtPolicy {
            cache: RefCell::new(TokenCache::new(config.token_cache_size)),
            refused: RefCell::new(RefusedTokens::new(config.token_cache_size)),
            shared,
            config,
            keys: RefCell::new(keys),
            scheduled: RefCell::new(Vec::new()),
        }
    }

    fn remote(&self, index: usize) -> Option<&RemoteJwks> {
        match &self.config.providers.get(index)?.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Local(_) | KeySource::Native { .. } => None,
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

    fn shared(&self, index: usize) -> Option<&SharedJwks> {
        self.shared.get(index).and_then(Option::as_ref)
    }

    fn provider_name(&self, index: usize) -> &str {
        self.config.providers.get(index).map(|p| p.name.as_str()).unwrap_or("?")
    }

    /// Installs a key set in this VM; cached verifications against the old one stop counting.
    fn install(&self, index: usize, set: KeySet, sequence: u64) {
        if let Some(state) = self.keys.borrow_mut().get_mut(index) {
            state.set = Some(Rc::new(set));
            state.generation = state.generation.wrapping_add(1);
            state.sequence = sequence;
        }
    }

    /// Installs the key set another worker published, if this VM does not have it yet.
    /// Returns whether it did.
    fn sync(&self, host: &dyn Host, index: usize) -> bool {
        let Some(shared) = self.shared(index) else { return false };
        let record = shared.read(host);
        let local = self.keys.borrow().get(index).map(|k| k.sequence);
        if record.jwks.is_empty() || local == Some(record.sequence) {
            return false;
        }
        // Only documents that parsed are published; one that does not now is left alone.
        match parse_jwks(&record.jwks, false) {
            Ok(parsed) => {
                self.install(index, parsed.set, record.sequence);
                true
            }
            Err(_) => false,
        }
    }

    /// Applies a fetch: on success installs and publishes the key set; on failure keeps the
    /// last good set and, for a fetch under the lease, schedules a retry with backoff.
    fn apply_fetch(&self, host: &mut dyn Host, index: usize, response: &HttpCallResponse, leased: bool) {
        let now = unix_secs(host);
        let (Some(remote), Some(shared)) = (self.remote(index), self.shared(index)) else { return };
        let name = self.provider_name(index).to_string();
        let result = match response.status {
            Some(200) => parse_jwks(&response.body, false).map_err(|e| e.to_string()),
            Some(status) => Err(format!("HTTP status {status}")),
            None => Err("no response (connection failed or timed out)".to_string()),
        };
        match result {
            Ok(parsed) => {
                let published = shared.update(host, |r| {
                    r.sequence = r.sequence.wrapping_add(1);
                    r.jwks = response.body.clone();
                    r.next_fetch_at = now.saturating_add(remote.cache_duration.as_secs());
                    r.failures = 0;
                    if leased {
                        r.lease_until = 0;
                    }
                    Some(r.sequence)
                });
                // Unshared (shared data unavailable), the keys still serve this VM.
                self.install(index, parsed.set, published.ok().flatten().unwrap_or(0));
                count(host, Counter::JwtJwksFetchOk);
                host.log(LogLevel::Info, &format!("meshward_jwt: provider {name}: fetched JWKS from {}", remote.uri));
                for note in parsed.skipped {
                    host.log(LogLevel::Warn, &format!("meshward_jwt: provider {name}: skipped {note}"));
                }
            }
            Err(why) => {
                let retry = if leased {
                    let backoff = shared.update(host, |r| {
                        r.failures = r.failures.saturating_add(1);
                        let backoff = 1u64
                            .checked_shl(r.failures.saturating_sub(1))
                            .unwrap_or(u64::MAX)
                            .min(MAX_RETRY_BACKOFF_SECS)
                            .min(remote.cache_duration.as_secs().max(1));
                        r.next_fetch_at = now.saturating_add(backoff);
                        r.lease_until = 0;
                        Some(backoff)
                    });
                    match backoff {
                        Ok(Some(b)) => format!("; retry in {b}s"),
                        _ => "; retry when the lease expires".to_string(),
                    }
                } else {
                    String::new()
                };
                let has_keys = self.keys.borrow().get(index).is_some_and(|k| k.set.is_some());
                let kept = if has_keys { "keeping the last good key set" } else { "no keys yet: requests are denied" };
                count(host, Counter::JwtJwksFetchFailed);
                host.log(LogLevel::Warn, &format!("meshward_jwt: provider {name}: JWKS fetch from {} failed: {why}; {kept}{retry}", remote.uri));
            }
        }
    }

    /// Installs what other workers fetched, and starts the scheduled fetches that are due and
    /// whose lease this worker wins.
    fn start_scheduled_fetches(&self, host: &mut dyn Host) {
        let now = unix_secs(host);
        for index in 0..self.config.providers.len() {
            let (Some(remote), Some(shared)) = (self.remote(index), self.shared(index)) else { continue };
            self.sync(host, index);
            if self.keys.borrow().get(index).is_none_or(|k| now < k.scheduled_until) {
                continue;
            }
            let lease = lease_end(remote, now);
            let won = shared.update(host, |r| {
                (now >= r.next_fetch_at && now >= r.lease_until).then(|| r.lease_until = lease)
            });
            if matches!(won, Ok(Some(()))) {
                self.dispatch_scheduled(host, index, lease, true);
            }
        }
    }

    /// A VM starting without keys fetches its own at once, outside the lease: Envoy also
    /// configures a throwaway VM to validate a configuration, whose call is never answered, and
    /// its lease would hold every worker back. A VM that finds keys in shared data (an earlier
    /// configuration, another worker) uses them and leaves the schedule to the lease.
    fn fetch_first_keys(&self, host: &mut dyn Host) {
        let now = unix_secs(host);
        for index in 0..self.config.providers.len() {
            let Some(remote) = self.remote(index) else { continue };
            if !self.sync(host, index) {
                self.dispatch_scheduled(host, index, lease_end(remote, now), false);
            }
        }
    }

    /// Dispatches a scheduled fetch, in flight for this VM until `until`.
    fn dispatch_scheduled(&self, host: &mut dyn Host, index: usize, until: u64, leased: bool) {
        match self.dispatch_fetch(host, index) {
            Ok(token) => {
                if let Some(k) = self.keys.borrow_mut().get_mut(index) {
                    k.scheduled_until = until;
                }
                self.scheduled.borrow_mut().push((token, index, leased));
            }
            Err(e) => self.apply_fetch(
                host,
                index,
                &HttpCallResponse { status: None, body: e.to_string().into_bytes(), ..HttpCallResponse::default() },
                leased,
            ),
        }
    }

    /// Claims the sidecar's on-demand fetch for a provider (at most one per
    /// [`ON_DEMAND_REFRESH_INTERVAL_SECS`]). Without shared data, the per-VM bound applies alone.
    fn claim_on_demand(&self, host: &mut dyn Host, index: usize, now: u64) -> bool {
        let Some(shared) = self.shared(index) else { return false };
        let claimed = shared.update(host, |r| {
            (now.saturating_sub(r.last_on_demand_at) >= ON_DEMAND_REFRESH_INTERVAL_SECS).then(|| r.last_on_demand_at = now)
        });
        !matches!(claimed, Ok(None))
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
            for shared in policy.shared.iter().flatten() {
                shared.create(host);
            }
            host.set_tick_period(TICK_PERIOD);
            policy.fetch_first_keys(host);
        }
    }

    fn on_tick(policy: &Rc<Self>, host: &mut dyn Host) {
        policy.start_scheduled_fetches(host);
    }

    fn on_http_call_response(policy: &Rc<Self>, host: &mut dyn Host, token: u32, response: HttpCallResponse) {
        let (index, leased) = {
            let mut scheduled = policy.scheduled.borrow_mut();
            let Some(pos) = scheduled.iter().position(|(t, _, _)| *t == token) else { return };
            let (_, index, leased) = scheduled.remove(pos);
            (index, leased)
        };
        if let Some(k) = policy.keys.borrow_mut().get_mut(index) {
            k.scheduled_until = 0;
        }
        policy.apply_fetch(host, index, &response, leased);
    }

    fn new_stage(policy: &Rc<Self>) -> JwtStage {
        JwtStage {
            policy: Rc::clone(policy),
            rule: None,
            refresh_refused: Vec::new(),
            synced: Vec::new(),
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
    /// Providers whose shared key set this request already looked at.
    synced: Vec<usize>,
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
        // The request's metadata, read once for every native provider and requirement asking.
        let metadata: std::cell::OnceCell<Option<Vec<u8>>> = std::cell::OnceCell::new();
        loop {
            let now = unix_secs(host);
            let refused_from_memory = std::cell::Cell::new(false);
            let outcome = {
                let refused = &self.refresh_refused;
                let seen: &RequestState = request;
                authenticate(
                    &policy.config,
                    requirement,
                    &Inputs {
                        header: &|name| seen.header(name).map(str::to_string),
                        keys: &|i| policy.key_set(i),
                        may_refresh: &|i| !refused.contains(&i) && policy.may_refresh_on_demand(i, now),
                        cached: &|i, token| policy.cache.borrow().get(i, policy.generation(i), token),
                        remember: &|i, token, principal| {
                            policy.cache.borrow_mut().insert(i, policy.generation(i), token, principal)
                        },
                        refused: &|i, token| {
                            let refused = policy.refused.borrow().get(i, policy.generation(i), token);
                            refused_from_memory.set(refused.is_some());
                            refused
                        },
                        remember_refusal: &|i, token, e| policy.refused.borrow_mut().insert(i, policy.generation(i), token, e),
                        native_payload: &|i| match &policy.config.providers.get(i)?.keys {
                            KeySource::Native { payload_in_metadata } => payload_from_metadata(
                                metadata.get_or_init(|| host.property(&METADATA_PROPERTY)).as_deref()?,
                                payload_in_metadata,
                            ),
                            _ => None,
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
                Outcome::Denied(e) => {
                    if refused_from_memory.get() {
                        count(host, Counter::JwtRefusedFromMemory);
                    }
                    return Step::Deny(e.denial());
                }
                Outcome::NeedKeys(index) => {
                    // Another worker may have fetched newer keys: try them once.
                    if !self.synced.contains(&index) {
                        self.synced.push(index);
                        if policy.sync(host, index) {
                            continue;
                        }
                    }
                    // Else one fetch, for the whole sidecar, in the refresh interval.
                    self.refresh_refused.push(index);
                    if !policy.claim_on_demand(host, index, now) {
                        continue;
                    }
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
        if a.encoded.is_empty() {
            // Later filters then find no principal and deny: still fail closed.
            host.log(LogLevel::Error, "meshward_jwt: cannot encode principal");
        } else if let Err(e) = host.set_property(&[PRINCIPAL_PROPERTY], &a.encoded) {
            host.log(LogLevel::Error, &format!("meshward_jwt: cannot publish principal: {e}"));
        }
        for c in &provider.claim_to_headers {
            if let Some(value) = a.principal.claim(&c.claim_name).and_then(claim_header_value) {
                request.set_header(host, &c.header_name, Some(&value));
            }
        }
        // (A payload from native jwt_authn has no token header here: that filter removes it.)
        if !provider.forward && !a.token_header.is_empty() {
            request.set_header(host, &a.token_header, None);
        }
        request.principal = Some(a.principal);
    }
}

impl Stage for JwtStage {
    fn scrub(&mut self, host: &mut dyn Host, request: &mut RequestState) {
        // Claim headers are only ever set by meshward: drop whatever the client sent.
        for provider in &self.policy.config.providers {
            for c in &provider.claim_to_headers {
                if request.header(&c.header_name).is_some() {
                    request.set_header(host, &c.header_name, None);
                }
            }
        }
    }

    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        self.rule = policy.config.rules.iter().position(|r| r.path_match.matches(&request.canonical));
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
                self.policy.apply_fetch(host, index, &response, false);
                self.decide(host, request)
            }
            // Not the call this request waits for: keep waiting.
            _ => Step::Pause,
        }
    }
}
