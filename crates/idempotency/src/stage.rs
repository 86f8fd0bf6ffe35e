//! The idempotency policy as a [`Policy`] / [`Stage`].
//!
//! A request on an idempotent operation: key and caller read from the headers, the body
//! fingerprinted, the key claimed in the fleet engine. The engine answers with the key's state:
//! free (now this request's: it goes on), in flight (409), or answered (the stored answer is
//! given back, or 422 when the key was used for another request). The upstream's answer
//! settles the claim: stored for `expiry`, or released when it is a 5xx, larger than
//! `max_answer_bytes`, or not the upstream's (a later stage refused), so the retry runs. No
//! answer at all (the stream was reset) leaves the key in flight for `in_flight_seconds`.
//!
//! At most once per key within `expiry`: the claim is held in the engine for all of `expiry`
//! until it is settled, and an outcome the engine did not record is kept by this sidecar and
//! sent again until it is ([`UnsettledStore`]); a copy meanwhile gets the stored answer here,
//! 409 elsewhere.

use std::rc::Rc;

use meshward_core::clock::{unix_micros, unix_millis};
use meshward_core::fleet::{claim_token, decode_claim, Claim, FailureMode, SettleAnswer, SettleRequest, Settlement};
use meshward_core::principal::current_principal;
use meshward_core::route::query_of;
use meshward_core::stats::{count, Counter};
use meshward_core::unsettled::{settle_answered, settle_failed, settle_from_tick, UnsettledStore};
use meshward_core::{config::ConfigError, GrpcResponse, Mode, Policy, RequestState, Stage, Step};
use meshward_host::{Host, LogLevel};

use crate::config::IdempotencyConfig;
use crate::key::{fingerprint, parse_key, scoped_key};
use crate::record;
use crate::IdempotencyError;

#[derive(Debug)]
pub struct IdempotencyPolicy {
    pub config: IdempotencyConfig,
    /// Outcomes the engine did not record yet.
    unsettled: UnsettledStore,
}

impl Policy for IdempotencyPolicy {
    const NAME: &'static str = "idempotency";
    type Stage = IdempotencyStage;

    fn configure(config: &[u8], _host: &dyn Host) -> Result<Self, ConfigError> {
        IdempotencyConfig::parse(config).map(|config| IdempotencyPolicy { config, unsettled: UnsettledStore::new(Self::NAME) })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn on_tick(policy: &Rc<Self>, host: &mut dyn Host) {
        let now_ms = unix_millis(host);
        policy.unsettled.retry(host, &policy.config.fleet, now_ms);
    }

    fn on_grpc_call_response(policy: &Rc<Self>, host: &mut dyn Host, token: u32, response: &GrpcResponse) {
        policy.unsettled.on_answer(host, token, response);
    }

    fn new_stage(policy: &Rc<Self>) -> IdempotencyStage {
        IdempotencyStage {
            policy: Rc::clone(policy),
            key: None,
            fingerprint: String::new(),
            token: None,
            answer: None,
            waiting: None,
            settling: None,
            claim_sent: None,
        }
    }
}

/// The engine call the stage waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Claim(u32),
    /// Storing the answer, or releasing the key.
    Settle(u32, Outcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stored,
    NotStored,
}

/// One request's walk: headers, body, claim; then the answer.
#[derive(Debug)]
pub struct IdempotencyStage {
    policy: Rc<IdempotencyPolicy>,
    /// The key in the engine (operation and caller digest), once the headers were read.
    key: Option<String>,
    fingerprint: String,
    /// The claim this request holds, until the answer settles it.
    token: Option<String>,
    /// The answer's status and stored headers, while its body is read.
    answer: Option<(u16, Vec<(String, String)>)>,
    waiting: Option<Waiting>,
    /// The settle sent, and until when (unix ms) a stored answer is kept: what the sidecar
    /// keeps when the engine does not confirm it.
    settling: Option<(SettleRequest, u64)>,
    /// The token of the claim sent, until the engine answers it.
    claim_sent: Option<String>,
}

impl IdempotencyStage {
    fn config(&self) -> &IdempotencyConfig {
        &self.policy.config
    }

    /// The engine did not answer a claim: the configured failure mode decides.
    fn claim_failed(&mut self, host: &mut dyn Host, why: &str) -> Step {
        count(host, Counter::IdempotencyServiceFailures);
        host.log(LogLevel::Warn, &format!("meshward_idempotency: claim failed: {why}"));
        match self.config().fleet.failure_mode {
            FailureMode::Allow => Step::Continue,
            FailureMode::Deny => Step::Deny(IdempotencyError::ServiceUnavailable.denial()),
        }
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
                self.token = Some(token);
                Step::Continue
            }
            Claim::InFlight { fingerprint, .. } | Claim::Seen { fingerprint, .. } if fingerprint != self.fingerprint => {
                Step::Deny(IdempotencyError::KeyReused.denial())
            }
            Claim::InFlight { remaining_ms, .. } => {
                Step::Deny(IdempotencyError::InFlight { retry_after_secs: remaining_ms.div_ceil(1000).max(1) }.denial())
            }
            Claim::Seen { record, .. } => match record::replay(&record) {
                Some(reply) => {
                    count(host, Counter::IdempotencyReplays);
                    Step::Respond(reply)
                }
                None => Step::Deny(IdempotencyError::StoredAnswerUnreadable.denial()),
            },
        }
    }

    /// The settle request for the claim this request holds (taking the claim), and until when
    /// a stored answer is kept.
    fn settle_request(&mut self, host: &dyn Host, settlement: Settlement) -> Option<(SettleRequest, u64)> {
        let (key, token) = (self.key.as_deref()?, self.token.take()?);
        let config = self.config();
        let keep_until_ms = unix_millis(host) + u64::try_from(config.expiry.as_millis()).unwrap_or(u64::MAX);
        Some((config.fleet.settle_request(key, &token, &self.fingerprint, settlement), keep_until_ms))
    }

    /// Settles the claim this request holds; the stream waits for the engine (`Pause`) so a
    /// retry that follows the answer finds it settled. Unconfirmed, the outcome is kept here.
    fn settle(&mut self, host: &mut dyn Host, settlement: Settlement) -> Step {
        let outcome = if matches!(settlement, Settlement::Keep { .. }) { Outcome::Stored } else { Outcome::NotStored };
        let Some((request, keep_until_ms)) = self.settle_request(host, settlement) else { return Step::Continue };
        match self.config().fleet.send_settle(host, &request) {
            Ok(call) => {
                self.waiting = Some(Waiting::Settle(call, outcome));
                self.settling = Some((request, keep_until_ms));
                Step::Pause
            }
            Err(e) => {
                let policy = Rc::clone(&self.policy);
                settle_failed(host, &policy.unsettled, Counter::IdempotencySettleFailures, request, keep_until_ms, &e.to_string());
                Step::Continue
            }
        }
    }

    /// A settle nobody waits for (the answer is on its way, or gone): the tick sends it, and
    /// again until the engine records it.
    fn settle_later(&mut self, host: &mut dyn Host, settlement: Settlement) {
        let Some((request, keep_until_ms)) = self.settle_request(host, settlement) else { return };
        settle_from_tick(host, &Rc::clone(&self.policy).unsettled, request, keep_until_ms);
    }

    /// The claim's own answer never came: the engine may have written it (a late claim would
    /// hold the key for all of `expiry`), so it is abandoned from the tick.
    fn abandon_claim(&mut self, host: &mut dyn Host) {
        self.token = self.claim_sent.take();
        let window = self.config().expiry;
        self.settle_later(host, Settlement::Abandon { window });
    }
}

impl Stage for IdempotencyStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        let config = &policy.config;
        let Some(operation) = config.operation(request.route_method(), &request.canonical) else { return Step::Continue };
        request.route = Some(operation.name.clone());
        let key = match parse_key(request.header_values(&config.header)) {
            Ok(key) => key,
            Err(e) => return Step::Deny(e.denial()),
        };
        let principal = current_principal(host, &mut request.principal);
        let Some(scoped) = scoped_key(principal.as_deref(), &operation.name, &key) else {
            return Step::Deny(IdempotencyError::PrincipalRequired.denial());
        };
        self.key = Some(scoped);
        Step::NeedBody { max_bytes: config.max_body_bytes }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, request: &mut RequestState, body: &[u8]) -> Step {
        let Some(key) = self.key.clone() else { return Step::Continue };
        self.fingerprint = fingerprint(&request.method, &request.canonical, query_of(&request.path), body);
        let config = self.config();
        // An answer this sidecar holds for the engine is the key's answer already.
        if let Some(kept) = self.policy.unsettled.lookup(host, &config.fleet.engine_key(&key)).filter(|k| k.accepted) {
            if kept.fingerprint != self.fingerprint {
                return Step::Deny(IdempotencyError::KeyReused.denial());
            }
            return match record::replay(&kept.record) {
                Some(reply) => {
                    count(host, Counter::IdempotencyReplays);
                    Step::Respond(reply)
                }
                None => Step::Deny(IdempotencyError::StoredAnswerUnreadable.denial()),
            };
        }
        let token = claim_token(&key, unix_micros(host));
        match config.fleet.claim(host, &key, &token, &self.fingerprint, config.in_flight, config.expiry) {
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
            Some(Waiting::Settle(t, outcome)) if t == token => {
                self.waiting = None;
                let policy = Rc::clone(&self.policy);
                let answer = settle_answered(host, &policy.unsettled, Counter::IdempotencySettleFailures, self.settling.take(), &response);
                if answer == SettleAnswer::Settled {
                    count(host, if outcome == Outcome::Stored { Counter::IdempotencyStored } else { Counter::IdempotencyNotStored });
                }
                Step::Continue
            }
            _ => Step::Pause,
        }
    }

    /// The answer is stored only when the upstream gave it (not a local reply: a later stage's
    /// refusal, Envoy's own 503) and it is not a 5xx; otherwise the key is released.
    fn on_response_headers(&mut self, host: &mut dyn Host, _request: &mut RequestState) -> Step {
        if self.token.is_none() {
            return Step::Continue;
        }
        let status = host.response_header(":status").and_then(|s| s.parse::<u16>().ok());
        let from_upstream = host.property(&["response", "code_details"]).is_some_and(|d| d == b"via_upstream");
        match status {
            Some(status) if status < 500 && from_upstream => {
                let headers = self
                    .config()
                    .stored_headers
                    .iter()
                    .filter_map(|name| host.response_header(name).map(|value| (name.clone(), value)))
                    .collect();
                self.answer = Some((status, headers));
                Step::CopyBody { max_bytes: self.config().max_answer_bytes }
            }
            _ => self.settle(host, Settlement::Release),
        }
    }

    fn on_response_body(&mut self, host: &mut dyn Host, _request: &mut RequestState, body: &[u8]) -> Step {
        let Some((status, headers)) = self.answer.take() else { return Step::Continue };
        let record = record::encode(status, &headers, body);
        let keep = self.config().expiry;
        self.settle(host, Settlement::Keep { keep, record })
    }

    /// Too large to store: released, so the retry runs. The body is on its way meanwhile: the
    /// release is sent from the tick (a retry in between gets 409).
    fn on_response_body_too_large(&mut self, host: &mut dyn Host, _request: &mut RequestState) {
        self.answer = None;
        if self.token.is_some() {
            count(host, Counter::IdempotencyNotStored);
            self.settle_later(host, Settlement::Release);
        }
    }

    /// A claim still held when the stream ends (reset before any answer) may belong to a
    /// request the service ran: it lapses after `in_flight_seconds`, so a retry meanwhile gets
    /// 409 rather than running the operation twice.
    fn on_done(&mut self, host: &mut dyn Host, _request: &mut RequestState) {
        self.settle_later(host, Settlement::Lapse);
    }
}
