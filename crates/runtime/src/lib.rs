//! Runs meshward policies as a proxy-wasm HTTP filter: one policy (its own module) or an
//! ordered list of them in one module (the bundle).
//!
//! Everything that is the same for every meshward filter lives here, once: reading the request
//! basics, running the stages in order, buffering bodies for the stages that need them, turning
//! a [`Denial`] into a response, shadow mode per stage, one log line per denial, and counters
//! per stage, decision and reason. [`Filter`] holds that logic against the [`Host`] trait so it
//! is tested with the fake host; the proxy-wasm glue (wasm32 only) only forwards calls.
//!
//! Counters (visible in Envoy's `/stats`; with the `stats_tags` in `envoy/envoy.yaml`,
//! `route` and `reason` become Prometheus labels):
//! - `meshward_<stage>_allowed_total[.route.<route>]`
//! - `meshward_<stage>_denied_total[.route.<route>].reason.<reason>`
//! - `meshward_<stage>_shadow_denied_total[.route.<route>].reason.<reason>` (shadow: would have denied)
//!
//! `.route.<route>` appears when the matching rule has a name.

use std::rc::Rc;

use meshward_core::config::ConfigError;
use meshward_core::request::{coding, decode, BodyError};
use meshward_core::{Denial, DenialKind, GrpcResponse, Mode, Policy, RequestState, Stage, Step};
use meshward_host::{Host, HttpCallResponse, LogLevel};

#[cfg(target_arch = "wasm32")]
mod proxy;
#[cfg(target_arch = "wasm32")]
pub use proxy::register;

/// What the proxy should do with the request after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Wait: a call is in flight, the body is being buffered, or a local response was sent.
    Pause,
}

/// Counter name for a decision of the stage `name`, on a named route or not.
pub fn counter_name(name: &str, decision: &str, route: Option<&str>, reason: Option<&str>) -> String {
    let mut out = format!("meshward_{name}_{decision}_total");
    if let Some(route) = route {
        out.push_str(".route.");
        out.push_str(route);
    }
    if let Some(reason) = reason {
        out.push_str(".reason.");
        out.push_str(reason);
    }
    out
}

/// A policy with its type erased, so a list of different policies can run in one filter.
pub trait AnyPolicy {
    fn name(&self) -> &'static str;
    fn start(&self, host: &mut dyn Host);
    fn on_tick(&self, host: &mut dyn Host);
    fn on_http_call_response(&self, host: &mut dyn Host, token: u32, response: HttpCallResponse);
    /// The slot that runs this policy for one request.
    fn new_slot(&self) -> Slot;
}

impl<P: Policy> AnyPolicy for Rc<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn start(&self, host: &mut dyn Host) {
        P::start(self, host);
    }
    fn on_tick(&self, host: &mut dyn Host) {
        P::on_tick(self, host);
    }
    fn on_http_call_response(&self, host: &mut dyn Host, token: u32, response: HttpCallResponse) {
        P::on_http_call_response(self, host, token, response);
    }
    fn new_slot(&self) -> Slot {
        Slot::new(P::NAME, self.mode(), Box::new(P::new_stage(self)))
    }
}

/// What a module runs: built from its configuration once per VM, then asked for the stages of
/// each request. One policy ([`Single`]) or several (the bundle).
pub trait Plan: Sized + 'static {
    /// Log prefix of the module (`meshward_jwt`, `meshward`).
    fn module_name() -> &'static str;
    fn configure(config: &[u8], host: &dyn Host) -> Result<Self, ConfigError>;
    fn policies(&self) -> &[Box<dyn AnyPolicy>];

    fn start(&self, host: &mut dyn Host) {
        for p in self.policies() {
            p.start(host);
        }
    }
    fn on_tick(&self, host: &mut dyn Host) {
        for p in self.policies() {
            p.on_tick(host);
        }
    }
    /// Root-level call answers go to every policy; each knows its own tokens.
    fn on_http_call_response(&self, host: &mut dyn Host, token: u32, response: &HttpCallResponse) {
        for p in self.policies() {
            p.on_http_call_response(host, token, response.clone());
        }
    }
    fn new_filter(&self) -> Filter {
        Filter::from_slots(self.policies().iter().map(|p| p.new_slot()).collect())
    }
}

/// One policy as its own module.
pub struct Single<P: Policy> {
    policies: Vec<Box<dyn AnyPolicy>>,
    _policy: std::marker::PhantomData<P>,
}

impl<P: Policy> Plan for Single<P> {
    fn module_name() -> &'static str {
        match P::NAME {
            "jwt" => "meshward_jwt",
            "webhook" => "meshward_webhook",
            "ownership" => "meshward_ownership",
            "ratelimit" => "meshward_ratelimit",
            "schema" => "meshward_schema",
            _ => "meshward",
        }
    }
    fn configure(config: &[u8], host: &dyn Host) -> Result<Self, ConfigError> {
        let policy: Rc<P> = Rc::new(P::configure(config, host)?);
        Ok(Single { policies: vec![Box::new(policy)], _policy: std::marker::PhantomData })
    }
    fn policies(&self) -> &[Box<dyn AnyPolicy>] {
        &self.policies
    }
}

/// One stage of a request: its policy's name and mode, and what it asked for.
pub struct Slot {
    name: &'static str,
    mode: Mode,
    stage: Box<dyn Stage>,
    /// Name of the rule the stage matched (per stage, for its counters).
    route: Option<String>,
    /// The stage asked for the request body, up to this size.
    body_limit: Option<usize>,
    /// The stage asked for the response body, up to this size.
    response_body_limit: Option<usize>,
}

impl Slot {
    pub fn new(name: &'static str, mode: Mode, stage: Box<dyn Stage>) -> Self {
        Slot { name, mode, stage, route: None, body_limit: None, response_body_limit: None }
    }
}

/// How a stage's step settles for the request.
enum Settled {
    /// Go on to the next stage.
    Next,
    /// The stage waits for a call it dispatched.
    Wait,
    /// A local response was sent: stop.
    Stopped,
}

/// One request through an ordered list of stages.
pub struct Filter {
    slots: Vec<Slot>,
    request: RequestState,
    /// The slot waiting for an HTTP or gRPC call answer.
    paused: Option<usize>,
    /// The request has no more body to come (end of stream seen).
    body_complete: bool,
    body_delivered: bool,
}

impl Filter {
    /// A filter running one policy.
    pub fn new<P: Policy>(policy: &Rc<P>) -> Self {
        Filter::from_slots(vec![Rc::clone(policy).new_slot()])
    }

    /// A filter running these stages in order.
    pub fn from_slots(slots: Vec<Slot>) -> Self {
        Filter { slots, request: RequestState::default(), paused: None, body_complete: false, body_delivered: false }
    }

    /// The request state the stages saw (principal included).
    pub fn request(&self) -> &RequestState {
        &self.request
    }

    /// `end_of_stream`: the request has no body.
    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Verdict {
        self.body_complete = end_of_stream;
        self.request = RequestState::from_headers(host.request_headers(), end_of_stream);
        for slot in &mut self.slots {
            slot.stage.scrub(host, &mut self.request);
        }
        self.run_request_headers(host, 0)
    }

    fn run_request_headers(&mut self, host: &mut dyn Host, from: usize) -> Verdict {
        for i in from..self.slots.len() {
            let step = {
                let slot = &mut self.slots[i];
                self.request.route = None;
                // A request no stage can read unambiguously is refused by each in its mode.
                let step = match &self.request.refusal {
                    Some(refusal) => Step::Deny(refusal.denial()),
                    None => slot.stage.on_request_headers(host, &mut self.request),
                };
                slot.route = self.request.route.take();
                step
            };
            match self.settle(host, i, step) {
                Settled::Next => {}
                Settled::Wait => {
                    self.paused = Some(i);
                    return Verdict::Pause;
                }
                Settled::Stopped => return Verdict::Pause,
            }
        }
        if self.slots.iter().any(|s| s.body_limit.is_some()) && self.body_complete {
            // Headers-only request: the whole body is the empty one.
            return self.deliver_body(host, 0);
        }
        // Any body a stage asked for is held in on_request_body; the headers go on (proxy-wasm
        // hosts turn a paused headers callback into stop-all-iteration, which never delivers
        // the body to this filter).
        Verdict::Continue
    }

    fn settle(&mut self, host: &mut dyn Host, i: usize, step: Step) -> Settled {
        match step {
            Step::Continue => {
                self.count_allowed(host, i);
                Settled::Next
            }
            Step::Pause => Settled::Wait,
            Step::NeedBody { .. } if self.body_delivered => {
                let denial = Denial::new(DenialKind::Unavailable, "stage_error", "the filter asked for the body twice");
                self.deny(host, i, &denial)
            }
            Step::NeedBody { max_bytes } => {
                self.slots[i].body_limit = Some(max_bytes);
                Settled::Next
            }
            Step::Deny(denial) => self.deny(host, i, &denial),
        }
    }

    fn count_allowed(&self, host: &mut dyn Host, i: usize) {
        let slot = &self.slots[i];
        host.increment_counter(&counter_name(slot.name, "allowed", slot.route.as_deref(), None), 1);
    }

    /// Counts and logs a denial; `true` when it is enforced (not shadow mode).
    fn record_denial(&mut self, host: &mut dyn Host, i: usize, denial: &Denial) -> bool {
        let slot = &mut self.slots[i];
        slot.body_limit = None;
        slot.response_body_limit = None;
        let shadow = slot.mode == Mode::Shadow;
        let decision = if shadow { "shadow_denied" } else { "denied" };
        host.increment_counter(&counter_name(slot.name, decision, slot.route.as_deref(), Some(denial.reason)), 1);
        host.log(LogLevel::Info, &self.denial_log_line(i, denial, shadow));
        !shadow
    }

    /// Answers with the denial, unless the stage is in shadow mode (then the request goes on).
    fn deny(&mut self, host: &mut dyn Host, i: usize, denial: &Denial) -> Settled {
        if !self.record_denial(host, i, denial) {
            return Settled::Next;
        }
        send_denial(host, denial, self.request.request_id.as_deref());
        Settled::Stopped
    }

    /// A body chunk arrived; `body_size` is the size buffered so far.
    pub fn on_request_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) -> Verdict {
        self.body_complete = end_of_stream;
        for i in 0..self.slots.len() {
            let Some(max_bytes) = self.slots[i].body_limit else { continue };
            if body_size > max_bytes {
                let denial = Denial::new(
                    DenialKind::PayloadTooLarge,
                    "body_too_large",
                    format!("the request body is larger than {max_bytes} bytes"),
                );
                if let Settled::Stopped = self.deny(host, i, &denial) {
                    return Verdict::Pause;
                }
            }
        }
        if !self.slots.iter().any(|s| s.body_limit.is_some()) {
            return Verdict::Continue;
        }
        if !end_of_stream {
            return Verdict::Pause;
        }
        self.deliver_body(host, body_size)
    }

    fn deliver_body(&mut self, host: &mut dyn Host, body_size: usize) -> Verdict {
        self.body_delivered = true;
        let raw = if body_size == 0 { Vec::new() } else { host.request_body(0, body_size).unwrap_or_default() };
        let limit = self.slots.iter().filter_map(|s| s.body_limit).min().unwrap_or(0);
        let read = if raw.len() == body_size { self.decoded(raw, limit) } else { Err(None) };
        for i in 0..self.slots.len() {
            if self.slots[i].body_limit.take().is_none() {
                continue;
            }
            let step = match &read {
                Ok(body) => {
                    let slot = &mut self.slots[i];
                    self.request.route = slot.route.clone();
                    slot.stage.on_request_body(host, &mut self.request, body)
                }
                Err(Some(e)) => Step::Deny(e.denial()),
                Err(None) => Step::Deny(Denial::new(DenialKind::Unavailable, "body_unavailable", "the request body could not be read")),
            };
            match self.settle(host, i, step) {
                Settled::Next => {}
                // A stage cannot wait for a call once the body is in: refuse rather than hang.
                Settled::Wait => {
                    let denial = Denial::new(DenialKind::Unavailable, "stage_error", "the filter paused on the body");
                    if let Settled::Stopped = self.deny(host, i, &denial) {
                        return Verdict::Pause;
                    }
                }
                Settled::Stopped => return Verdict::Pause,
            }
        }
        Verdict::Continue
    }

    /// The body as the service reads it: decoded when it came with a content coding.
    /// `Err(None)`: it could not be read from the proxy.
    fn decoded(&self, raw: Vec<u8>, limit: usize) -> Result<Vec<u8>, Option<BodyError>> {
        if raw.is_empty() {
            return Ok(raw);
        }
        match coding(self.request.header("content-encoding")).map_err(Some)? {
            None => Ok(raw),
            Some(c) => decode(c, &raw, limit).map_err(Some),
        }
    }

    /// The response headers arrived; `end_of_stream`: the response has no body.
    pub fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Verdict {
        for i in 0..self.slots.len() {
            let step = {
                let slot = &mut self.slots[i];
                self.request.route = slot.route.clone();
                slot.stage.on_response_headers(host, &mut self.request)
            };
            match step {
                Step::Continue | Step::Pause => {}
                Step::NeedBody { max_bytes } => self.slots[i].response_body_limit = Some(max_bytes),
                Step::Deny(denial) => {
                    // Nothing of the response has left yet: a local reply replaces it.
                    if let Settled::Stopped = self.deny(host, i, &denial) {
                        return Verdict::Pause;
                    }
                }
            }
        }
        // Response headers can only be read here (not in body callbacks).
        if self.slots.iter().any(|s| s.response_body_limit.is_some()) && response_is_encoded(host) {
            // The stages asked the upstream for `identity`; an answer coded anyway cannot be
            // read, and what cannot be read is not passed: it is replaced before it leaves.
            for i in 0..self.slots.len() {
                if self.slots[i].response_body_limit.take().is_some() {
                    if let Settled::Stopped = self.deny(host, i, &encoded_response()) {
                        return Verdict::Pause;
                    }
                }
            }
        }
        if end_of_stream && self.slots.iter().any(|s| s.response_body_limit.is_some()) {
            return self.deliver_response_body(host, 0);
        }
        Verdict::Continue
    }

    /// A response body chunk arrived; `body_size` is the size buffered so far.
    pub fn on_response_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) -> Verdict {
        for i in 0..self.slots.len() {
            let Some(max_bytes) = self.slots[i].response_body_limit else { continue };
            if body_size > max_bytes {
                // Too large to check is not checked: it does not pass.
                let denial = Denial::new(DenialKind::Unavailable, "response_too_large", "the response is too large to be checked");
                if self.deny_response_body(host, i, &denial) {
                    return Verdict::Pause;
                }
            }
        }
        if !self.slots.iter().any(|s| s.response_body_limit.is_some()) {
            return Verdict::Continue;
        }
        if !end_of_stream {
            return Verdict::Pause;
        }
        self.deliver_response_body(host, body_size)
    }

    fn deliver_response_body(&mut self, host: &mut dyn Host, body_size: usize) -> Verdict {
        let body = if body_size == 0 { Vec::new() } else { host.response_body(0, body_size).unwrap_or_default() };
        for i in 0..self.slots.len() {
            if self.slots[i].response_body_limit.take().is_none() {
                continue;
            }
            let step = if body.len() == body_size {
                let slot = &mut self.slots[i];
                self.request.route = slot.route.clone();
                slot.stage.on_response_body(host, &mut self.request, &body)
            } else {
                Step::Deny(Denial::new(DenialKind::Unavailable, "body_unavailable", "the response body could not be read"))
            };
            if let Step::Deny(denial) = step {
                if self.deny_response_body(host, i, &denial) {
                    return Verdict::Pause;
                }
            }
        }
        Verdict::Continue
    }

    /// A denial after the response status went out. A local reply is no longer possible, so
    /// asking for one makes Envoy reset the stream: the client gets a broken response and none
    /// of the body, which cannot be mistaken for success. `true` when enforced.
    fn deny_response_body(&mut self, host: &mut dyn Host, i: usize, denial: &Denial) -> bool {
        if !self.record_denial(host, i, denial) {
            return false;
        }
        send_denial(host, denial, self.request.request_id.as_deref());
        true
    }

    /// The answer to an HTTP call the waiting stage dispatched.
    pub fn on_http_call_response(&mut self, host: &mut dyn Host, token: u32, response: HttpCallResponse) {
        let Some(i) = self.paused else { return };
        let step = {
            let slot = &mut self.slots[i];
            self.request.route = slot.route.clone();
            slot.stage.on_http_call_response(host, &mut self.request, token, response)
        };
        self.resume_after(host, i, step);
    }

    /// The answer to a gRPC call the waiting stage dispatched.
    pub fn on_grpc_response(&mut self, host: &mut dyn Host, token: u32, response: GrpcResponse) {
        let Some(i) = self.paused else { return };
        let step = {
            let slot = &mut self.slots[i];
            self.request.route = slot.route.clone();
            slot.stage.on_grpc_response(host, &mut self.request, token, response)
        };
        self.resume_after(host, i, step);
    }

    fn resume_after(&mut self, host: &mut dyn Host, i: usize, step: Step) {
        if let Some(route) = self.request.route.take() {
            self.slots[i].route = Some(route);
        }
        match self.settle(host, i, step) {
            Settled::Wait => {}
            Settled::Stopped => self.paused = None,
            Settled::Next => {
                self.paused = None;
                if self.run_request_headers(host, i + 1) == Verdict::Continue {
                    host.resume_request();
                }
            }
        }
    }

    /// One JSON line per denial: request id, principal when known, route, reason.
    fn denial_log_line(&self, i: usize, denial: &Denial, shadow: bool) -> String {
        let slot = &self.slots[i];
        let path = if self.request.refusal.is_some() { "<invalid>" } else { self.request.canonical.as_str() };
        let principal = self.request.principal.as_ref().and_then(|p| p.subject.clone());
        let line = serde_json::json!({
            "filter": format!("meshward_{}", slot.name),
            "decision": if shadow { "shadow_deny" } else { "deny" },
            "status": denial.status(),
            "reason": denial.reason,
            "request_id": self.request.request_id,
            "principal": principal,
            "route": slot.route,
            "method": self.request.method,
            "path": path,
        });
        format!("meshward_{}: {line}", slot.name)
    }
}

/// The answer carries a content coding (anything but none or `identity`).
fn response_is_encoded(host: &dyn Host) -> bool {
    !matches!(coding(host.response_header("content-encoding").as_deref()), Ok(None))
}

/// A classified field must not leave because it was compressed: a coded answer a stage must
/// read is refused (502).
fn encoded_response() -> Denial {
    Denial::new(DenialKind::BadGateway, "encoded_response", "the answer has a content-encoding and cannot be checked")
}

/// Sends the local response for a denial: status, challenge headers, JSON body.
pub fn send_denial(host: &mut dyn Host, denial: &Denial, request_id: Option<&str>) {
    let extra = denial.headers();
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
    host.send_response(denial.status(), &headers, &denial.body(request_id));
}
