//! The idempotency policy as a [`Policy`] / [`Stage`].
//!
//! A request on an idempotent operation: key and caller read from the headers, the body
//! fingerprinted, the key claimed in the fleet engine. The engine answers with the key's state:
//! free (now this request's: it goes on), in flight (409), or answered (the stored answer is
//! given back, or 422 when the key was used for another request). The upstream's answer
//! settles the claim: stored for `expiry`, or released when it is a 5xx, larger than
//! `max_answer_bytes`, or not the upstream's (a later stage refused), so the retry runs.

use std::rc::Rc;

use meshward_core::fleet::{decode_claim, settled, Claim, FailureMode, Settlement};
use meshward_core::principal::current_principal;
use meshward_core::route::query_of;
use meshward_core::stats::{count, Counter};
use meshward_core::{config::ConfigError, GrpcResponse, Mode, Policy, RequestState, Stage, Step};
use meshward_host::{Host, LogLevel};

use crate::config::IdempotencyConfig;
use crate::key::{fingerprint, parse_key, scoped_key};
use crate::record;
use crate::IdempotencyError;

#[derive(Debug)]
pub struct IdempotencyPolicy {
    pub config: IdempotencyConfig,
}

impl Policy for IdempotencyPolicy {
    const NAME: &'static str = "idempotency";
    type Stage = IdempotencyStage;

    fn configure(config: &[u8], _host: &dyn Host) -> Result<Self, ConfigError> {
        IdempotencyConfig::parse(config).map(|config| IdempotencyPolicy { config })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn new_stage(policy: &Rc<Self>) -> IdempotencyStage {
        IdempotencyStage { policy: Rc::clone(policy), key: None, fingerprint: String::new(), token: None, answer: None, waiting: None }
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
            return self.claim_failed(host, &format!("grpc status {}", response.status));
        };
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

    /// Settles the claim this request holds; the stream waits for the engine (`Pause`) so a
    /// retry that follows the answer finds it settled.
    fn settle(&mut self, host: &mut dyn Host, settlement: Settlement) -> Step {
        let (Some(key), Some(token)) = (self.key.as_deref(), self.token.take()) else { return Step::Continue };
        let outcome = if matches!(settlement, Settlement::Keep { .. }) { Outcome::Stored } else { Outcome::NotStored };
        match self.config().fleet.settle(host, key, &token, settlement) {
            Ok(call) => {
                self.waiting = Some(Waiting::Settle(call, outcome));
                Step::Pause
            }
            Err(e) => {
                count(host, Counter::IdempotencySettleFailures);
                host.log(LogLevel::Warn, &format!("meshward_idempotency: cannot settle a claim: {e}"));
                Step::Continue
            }
        }
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
        match config.fleet.claim(host, &key, &self.fingerprint, config.in_flight) {
            Ok(call) => {
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
                if !settled(&response) {
                    count(host, Counter::IdempotencySettleFailures);
                    host.log(LogLevel::Warn, &format!("meshward_idempotency: a claim was not settled (grpc status {})", response.status));
                } else {
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

    /// Too large to store: released, so the retry runs. The body is on its way meanwhile, so
    /// the release is best effort (the claim expires after `in_flight_seconds` otherwise).
    fn on_response_body_too_large(&mut self, host: &mut dyn Host, _request: &mut RequestState) {
        self.answer = None;
        if let (Some(key), Some(token)) = (self.key.as_deref(), self.token.take()) {
            count(host, Counter::IdempotencyNotStored);
            let _ = self.policy.config.fleet.settle(host, key, &token, Settlement::Release);
        }
    }

    // No `on_done`: a claim still held when the stream ends (reset before any answer) may
    // belong to a request the service is running; it stays in flight until it expires, so a
    // retry meanwhile gets 409 rather than running the operation twice.
}
