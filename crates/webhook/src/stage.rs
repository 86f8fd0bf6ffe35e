//! The webhook policy as a [`Policy`] / [`Stage`].
//!
//! A delivery's walk: headers checked, body buffered and its signature verified, then its replay
//! key claimed (in this sidecar, then in the fleet engine when one is configured). The answer
//! settles the claim: seen when the upstream accepted it, released when not, so a redelivery
//! after a failure passes and nothing is processed twice.
//!
//! In the fleet engine a claim is held for the delivery's whole replay window until it is
//! settled; an outcome the engine did not record is kept by this sidecar and sent again until it
//! is ([`UnsettledStore`]), so a fault between the answer and the record never lets a copy run.

use std::rc::Rc;
use std::time::Duration;

use meshward_core::clock::{unix_micros, unix_millis};
use meshward_core::config::Unmatched;
use meshward_core::fleet::{claim_token, decode_claim, Claim, FailureMode, SettleRequest, Settlement};
use meshward_core::stats::{count, Counter};
use meshward_core::unsettled::{settle_answered, settle_failed, settle_from_tick, UnsettledStore};
use meshward_core::{config::ConfigError, GrpcResponse, Mode, Policy, RequestState, Stage, Step};
use meshward_host::{Host, LogLevel};

use crate::config::{Endpoint, WebhookConfig};
use crate::replay::{self, create_buckets, MICROS};
use crate::verify::{check_headers, replay_key, verify_signature, Delivery};
use crate::WebhookError;

/// The key in the fleet engine (under the service's namespace): endpoint and replay key.
fn fleet_key(endpoint: &Endpoint, key: &str) -> String {
    format!("{}/{key}", endpoint.name)
}

#[derive(Debug)]
pub struct WebhookPolicy {
    pub config: WebhookConfig,
    /// Outcomes the fleet engine did not record yet.
    unsettled: UnsettledStore,
}

impl Policy for WebhookPolicy {
    const NAME: &'static str = "webhook";
    type Stage = WebhookStage;

    fn configure(config: &[u8], host: &dyn Host) -> Result<Self, ConfigError> {
        WebhookConfig::parse(config, &|name| host.env_var(name)).map(|config| WebhookPolicy { config, unsettled: UnsettledStore::new(Self::NAME) })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn start(policy: &Rc<Self>, host: &mut dyn Host) {
        for endpoint in &policy.config.endpoints {
            create_buckets(host, endpoint);
        }
    }

    fn on_tick(policy: &Rc<Self>, host: &mut dyn Host) {
        if let Some(fleet) = &policy.config.fleet {
            let now_ms = unix_millis(host);
            policy.unsettled.retry(host, fleet, now_ms);
        }
    }

    fn on_grpc_call_response(policy: &Rc<Self>, host: &mut dyn Host, token: u32, response: &GrpcResponse) {
        policy.unsettled.on_answer(host, token, response);
    }

    fn new_stage(policy: &Rc<Self>) -> WebhookStage {
        WebhookStage { policy: Rc::clone(policy), pending: None, held: None, waiting: None, settling: None, claim_sent: None }
    }
}

/// A claim this request holds on its delivery's replay key, until the answer settles it.
#[derive(Debug)]
struct Held {
    endpoint: usize,
    key: String,
    /// The claim in this sidecar's table.
    local: u64,
    /// The claim in the fleet engine, once it granted one.
    fleet_token: Option<String>,
    /// Until when an accepted delivery stays seen: as long as a copy could still pass the
    /// timestamp check (or `replay_ttl_seconds` for schemes without a timestamp).
    seen_until_us: u64,
}

/// The fleet engine call the stage waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Claim(u32),
    Settle(u32),
}

/// One delivery's walk: headers checked first, then the buffered body, then the answer.
#[derive(Debug)]
pub struct WebhookStage {
    policy: Rc<WebhookPolicy>,
    /// Endpoint index and what its headers said, while the body is buffered.
    pending: Option<(usize, Delivery)>,
    held: Option<Held>,
    waiting: Option<Waiting>,
    /// The fleet settle sent, and until when (unix ms) the delivery stays seen: what the
    /// sidecar keeps when the engine does not confirm it.
    settling: Option<(SettleRequest, u64)>,
    /// The token of the fleet claim sent, until the engine answers it.
    claim_sent: Option<String>,
}

impl WebhookStage {
    fn endpoint(&self, index: usize) -> Option<&Endpoint> {
        self.policy.config.endpoints.get(index)
    }

    /// Releases the claim in this sidecar (the delivery was not accepted) and hands it back,
    /// for the fleet claim it may also hold.
    fn release_local(&mut self, host: &mut dyn Host) -> Option<Held> {
        let held = self.held.take()?;
        if let Some(endpoint) = self.policy.config.endpoints.get(held.endpoint) {
            let now_us = unix_micros(host);
            replay::settle(host, endpoint, &held.key, held.local, None, now_us);
        }
        Some(held)
    }

    /// The claim's own answer never came: the engine may have written it (a late claim would
    /// hold the delivery for its whole window), so it is abandoned from the tick.
    fn abandon_claim(&mut self, host: &mut dyn Host) {
        let policy = Rc::clone(&self.policy);
        let (Some(token), Some(fleet), Some(held)) = (self.claim_sent.take(), &policy.config.fleet, &self.held) else { return };
        let Some(endpoint) = policy.config.endpoints.get(held.endpoint) else { return };
        let window = Duration::from_micros(held.seen_until_us.saturating_sub(unix_micros(host)).max(1000));
        let request = fleet.settle_request(&fleet_key(endpoint, &held.key), &token, "", Settlement::Abandon { window });
        settle_from_tick(host, &policy.unsettled, request, 0);
    }

    /// The fleet engine did not answer a claim: the configured failure mode decides.
    fn claim_failed(&mut self, host: &mut dyn Host, why: &str) -> Step {
        count(host, Counter::WebhookReplayServiceFailures);
        host.log(LogLevel::Warn, &format!("meshward_webhook: fleet replay check failed: {why}"));
        let fail_open = self.policy.config.fleet.as_ref().is_some_and(|f| f.failure_mode == FailureMode::Allow);
        if fail_open {
            // This sidecar's claim still stands and is settled on the answer.
            return Step::Continue;
        }
        self.release_local(host);
        Step::Deny(WebhookError::ReplayServiceUnavailable.denial())
    }

    fn on_claim_answer(&mut self, host: &mut dyn Host, response: GrpcResponse) -> Step {
        let claim = if response.status == 0 { decode_claim(&response.message) } else { None };
        let Some(claim) = claim else {
            self.abandon_claim(host);
            return self.claim_failed(host, &format!("grpc status {}", response.status));
        };
        self.claim_sent = None;
        match claim {
            Claim::Claimed { token } => {
                if let Some(held) = &mut self.held {
                    held.fleet_token = Some(token);
                }
                Step::Continue
            }
            Claim::InFlight { remaining_ms, .. } => {
                self.release_local(host);
                Step::Deny(WebhookError::InFlight { retry_after_secs: remaining_ms.div_ceil(1000).max(1) }.denial())
            }
            Claim::Seen { .. } => {
                // Another replica accepted it: remember here too, so the next copy stops here.
                if let Some(held) = self.held.take() {
                    if let Some(endpoint) = self.endpoint(held.endpoint) {
                        let now_us = unix_micros(host);
                        replay::remember(host, endpoint, &held.key, held.seen_until_us, now_us);
                    }
                }
                Step::Deny(WebhookError::Replayed.denial())
            }
        }
    }
}

impl Stage for WebhookStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let config = &self.policy.config;
        let Some(index) = config.endpoints.iter().position(|e| e.path_match.matches(&request.canonical)) else {
            return match config.unmatched {
                Unmatched::Allow => Step::Continue,
                Unmatched::Deny => Step::Deny(WebhookError::RouteNotCovered.denial()),
            };
        };
        let endpoint = &config.endpoints[index];
        // The endpoint names the request's denial log lines and counters, as a rule does.
        request.route = Some(endpoint.name.clone());
        let seen: &RequestState = request;
        match check_headers(endpoint, &|name| seen.header(name).map(str::to_string), unix_micros(host) / MICROS) {
            Ok(delivery) => {
                self.pending = Some((index, delivery));
                Step::NeedBody { max_bytes: endpoint.max_body_bytes }
            }
            Err(e) => Step::Deny(e.denial()),
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, _request: &mut RequestState, body: &[u8]) -> Step {
        let Some((index, delivery)) = self.pending.take() else {
            return Step::Deny(WebhookError::MissingSignature.denial());
        };
        let policy = Rc::clone(&self.policy);
        let Some(endpoint) = policy.config.endpoints.get(index) else {
            return Step::Deny(WebhookError::RouteNotCovered.denial());
        };
        if let Err(e) = verify_signature(endpoint, &delivery, body) {
            return Step::Deny(e.denial());
        }
        if !endpoint.replay_protection {
            return Step::Continue;
        }
        let now_us = unix_micros(host);
        let now = now_us / MICROS;
        let seen_until = match delivery.timestamp {
            Some(ts) => u64::try_from(ts).unwrap_or(0).saturating_add(endpoint.tolerance_seconds).max(now) + 1,
            None => now.saturating_add(endpoint.replay_ttl_seconds),
        };
        let key = replay_key(&delivery, body);
        let local = match replay::claim(host, endpoint, &key, now_us) {
            Ok(value) => value,
            Err(e) => return Step::Deny(e.denial()),
        };
        let fleet_claim = policy.config.fleet.as_ref().map(|fleet| (fleet, fleet_key(endpoint, &key)));
        self.held = Some(Held { endpoint: index, key, local, fleet_token: None, seen_until_us: seen_until.saturating_mul(MICROS) });
        let Some((fleet, key)) = fleet_claim else {
            return Step::Continue;
        };
        let window = Duration::from_secs(seen_until.saturating_sub(now));
        let token = claim_token(&key, now_us);
        match fleet.claim(host, &key, &token, "", Duration::from_secs(endpoint.in_flight_seconds), window) {
            Ok(call) => {
                self.claim_sent = Some(token);
                self.waiting = Some(Waiting::Claim(call));
                Step::Pause
            }
            Err(e) => self.claim_failed(host, &e.to_string()),
        }
    }

    fn on_grpc_response(&mut self, host: &mut dyn Host, _request: &mut RequestState, token: u32, response: GrpcResponse) -> Step {
        match self.waiting {
            Some(Waiting::Claim(t)) if t == token => {
                self.waiting = None;
                self.on_claim_answer(host, response)
            }
            Some(Waiting::Settle(t)) if t == token => {
                self.waiting = None;
                let policy = Rc::clone(&self.policy);
                settle_answered(host, &policy.unsettled, Counter::WebhookSettleFailures, self.settling.take(), &response);
                Step::Continue
            }
            _ => Step::Pause,
        }
    }

    /// The upstream answered: the delivery is seen if it accepted it, released if not. The
    /// answer waits for the fleet engine to record it, so a sender that got 2xx is never let in
    /// again by another replica.
    fn on_response_headers(&mut self, host: &mut dyn Host, _request: &mut RequestState) -> Step {
        let Some(held) = self.held.take() else { return Step::Continue };
        let policy = Rc::clone(&self.policy);
        let Some(endpoint) = policy.config.endpoints.get(held.endpoint) else { return Step::Continue };
        let status = host.response_header(":status").and_then(|s| s.parse::<u16>().ok());
        let accepted = status.is_some_and(|s| endpoint.accepts(s));
        let seen_until = accepted.then_some(held.seen_until_us);
        let now_us = unix_micros(host);
        if !replay::settle(host, endpoint, &held.key, held.local, seen_until, now_us) {
            count(host, Counter::WebhookSettleFailures);
        }
        let (Some(fleet), Some(token)) = (&policy.config.fleet, &held.fleet_token) else { return Step::Continue };
        let settlement = if accepted {
            Settlement::Keep { keep: Duration::from_micros(held.seen_until_us.saturating_sub(now_us).max(1000)), record: Vec::new() }
        } else {
            Settlement::Release
        };
        let request = fleet.settle_request(&fleet_key(endpoint, &held.key), token, "", settlement);
        let keep_until_ms = held.seen_until_us / 1000;
        match fleet.send_settle(host, &request) {
            Ok(call) => {
                self.waiting = Some(Waiting::Settle(call));
                self.settling = Some((request, keep_until_ms));
                Step::Pause
            }
            Err(e) => {
                settle_failed(host, &policy.unsettled, Counter::WebhookSettleFailures, request, keep_until_ms, &e.to_string());
                Step::Continue
            }
        }
    }

    /// No answer came (the client went away, a later stage refused): release the claim so the
    /// redelivery passes. The fleet release is sent from the tick, again until the engine has it.
    fn on_done(&mut self, host: &mut dyn Host, _request: &mut RequestState) {
        let Some(held) = self.release_local(host) else { return };
        let policy = Rc::clone(&self.policy);
        let config = &policy.config;
        if let (Some(fleet), Some(token), Some(endpoint)) = (&config.fleet, &held.fleet_token, config.endpoints.get(held.endpoint)) {
            let request = fleet.settle_request(&fleet_key(endpoint, &held.key), token, "", Settlement::Release);
            settle_from_tick(host, &policy.unsettled, request, 0);
        }
    }
}
