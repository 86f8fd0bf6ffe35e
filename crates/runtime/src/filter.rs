//! One request through an ordered list of stages: the request model built once, each stage's
//! step settled (continue, wait, deny in its mode), bodies buffered for the stages that ask.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use meshward_core::request::BodyError;
use meshward_core::stats::{count_decision, Decision};
use meshward_core::stage::BODY_HEAD_BYTES;
use meshward_core::workload::is_identity_header;
use meshward_core::{Denial, GrpcResponse, Mode, Policy, Reply, RequestState, Stage, Step};
use meshward_host::{Host, HttpCallResponse, LogLevel};

use crate::audit::{Audit, StageRecord};
use crate::body_wait::{self, DEFAULT_BODY_TIMEOUT};
use crate::body::{decoded, response_is_encoded};
use crate::denial_log::{log_line, send_denial, RuntimeDenial};
use crate::plan::AnyPolicy;
use crate::Verdict;

/// The VM environment variable that says the proxy delivers the request body to a filter
/// holding the request headers: `true` only where Envoy's `allow_on_headers_stop_iteration` is
/// set for the filter (`meshward render` sets both). Without that setting, held headers would
/// never see their body and the request would hang, so the default is to let headers go on.
pub const HOLD_HEADERS_ENV: &str = "MESHWARD_HOLD_REQUEST_HEADERS";

/// One stage of a request: its policy's name and mode, and what it asked for.
pub struct Slot {
    name: &'static str,
    mode: Mode,
    stage: Box<dyn Stage>,
    /// Name of the rule the stage matched (per stage, for its counters).
    route: Option<String>,
    /// The stage asked for the request body, up to this size.
    body_limit: Option<usize>,
    /// The stage reads the request body as it arrives ([`Step::StreamBody`]).
    streams_body: bool,
    /// The stage asked for the response body, up to this size.
    response_body_limit: Option<usize>,
    /// The stage asked for a copy of the response body if it is at most this size.
    response_copy_limit: Option<usize>,
    /// What the stage decided, for the audit record.
    outcome: Outcome,
}

/// What a stage decided about a request, as its audit record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An earlier stage answered first.
    NotReached,
    Allowed,
    Denied(&'static str),
    /// Shadow mode: it would have denied, the request went on.
    ShadowDenied(&'static str),
}

impl Slot {
    pub fn new(name: &'static str, mode: Mode, stage: Box<dyn Stage>) -> Self {
        Slot {
            name,
            mode,
            stage,
            route: None,
            body_limit: None,
            streams_body: false,
            response_body_limit: None,
            response_copy_limit: None,
            outcome: Outcome::NotReached,
        }
    }

    fn wants_response_body(&self) -> bool {
        self.response_body_limit.is_some() || self.response_copy_limit.is_some()
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

/// Where a stage waits for the answer to a call it dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    RequestHeaders,
    /// The body was delivered; the stages after this one still need it ([`Filter::held_body`]).
    RequestBody,
    ResponseHeaders,
    /// The response body was delivered; the stages after this one (in response order) still
    /// need it ([`Filter::response_body`]).
    ResponseBody,
}

/// One request through an ordered list of stages.
pub struct Filter {
    slots: Vec<Slot>,
    request: RequestState,
    /// The slot waiting for an HTTP or gRPC call answer, and in which phase.
    paused: Option<(usize, Phase)>,
    /// The request has no more body to come (end of stream seen).
    body_complete: bool,
    /// Bytes of request body the proxy holds for this filter (buffered while it pauses).
    body_buffered: usize,
    body_delivered: bool,
    /// The decoded request body, kept while a stage waits on it for the stages after it.
    held_body: Vec<u8>,
    /// The proxy delivers the body to a filter that holds the request headers (Envoy's
    /// `allow_on_headers_stop_iteration`): headers wait for the body decisions ([`HOLD_HEADERS_ENV`]).
    hold_headers: bool,
    /// The response has no body (known from its headers).
    response_complete: bool,
    /// The whole response body once delivered (`None`: the proxy did not hand it over), kept
    /// while a stage waits on it for the stages after it.
    response_body: Option<Vec<u8>>,
    /// Write an audit record when the request ends.
    audit: Option<Rc<Audit>>,
    /// The proxy's id of this request's context, and how long it may wait for a body a stage
    /// holds it for ([`body_wait`]).
    context: u32,
    body_timeout: Duration,
    /// When the wait for the body ends (`Some` while it is on).
    body_deadline: Option<SystemTime>,
}

impl Filter {
    /// A filter running one policy.
    pub fn new<P: Policy>(policy: &Rc<P>) -> Self {
        Filter::from_slots(vec![Rc::clone(policy).new_slot()])
    }

    /// A filter running these stages in order.
    pub fn from_slots(slots: Vec<Slot>) -> Self {
        Filter {
            slots,
            request: RequestState::default(),
            paused: None,
            body_complete: false,
            body_buffered: 0,
            body_delivered: false,
            held_body: Vec::new(),
            hold_headers: false,
            response_complete: false,
            response_body: None,
            audit: None,
            context: 0,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_deadline: None,
        }
    }

    /// The request's context in the proxy, and how long it may wait for a body a stage holds
    /// it for (answered 408 `body_timeout` after).
    pub fn in_context(mut self, context: u32, body_timeout: Duration) -> Self {
        self.context = context;
        self.body_timeout = body_timeout;
        self
    }

    /// Writes an audit record of each request these settings cover.
    pub fn auditing(mut self, audit: Option<Rc<Audit>>) -> Self {
        self.audit = audit;
        self
    }

    /// Holds the request headers while stages read the body (see [`HOLD_HEADERS_ENV`]).
    pub fn holding_request_headers(mut self, hold: bool) -> Self {
        self.hold_headers = hold;
        self
    }

    /// The request state the stages saw (principal included).
    pub fn request(&self) -> &RequestState {
        &self.request
    }

    /// `end_of_stream`: the request has no body.
    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Verdict {
        self.body_complete = end_of_stream;
        self.request = RequestState::from_headers(host.request_headers(), end_of_stream);
        self.request.remove_headers(host, is_identity_header);
        for slot in &mut self.slots {
            slot.stage.scrub(host, &mut self.request);
        }
        let verdict = self.run_request_headers(host, 0);
        self.track_body_wait(host);
        verdict
    }

    /// The first stage in enforce mode holding the request for its body, if one is.
    fn waiting_for_body(&self) -> Option<usize> {
        if self.body_complete || self.body_delivered {
            return None;
        }
        self.slots.iter().position(|s| s.body_limit.is_some() && s.mode == Mode::Enforce)
    }

    /// Starts the bound on the wait for the body when a stage begins holding the request for
    /// it, and ends it once none does.
    fn track_body_wait(&mut self, host: &mut dyn Host) {
        match (self.waiting_for_body(), self.body_deadline) {
            (Some(_), None) => {
                let deadline = host.now() + self.body_timeout;
                self.body_deadline = Some(deadline);
                let (request_id, grpc) = (self.request.request_id.clone(), self.request.is_grpc());
                body_wait::start(body_wait::Wait { context: self.context, deadline, request_id, grpc, answered: false });
            }
            (None, Some(_)) => self.end_body_wait(host),
            _ => {}
        }
    }

    /// Ends the wait for the body; if the VM's tick answered it (408), the stage that held the
    /// request is charged with the denial (counted, logged, in the audit record).
    fn end_body_wait(&mut self, host: &mut dyn Host) {
        if self.body_deadline.take().is_none() {
            return;
        }
        let answered = body_wait::stop(self.context).is_some_and(|w| w.answered);
        if let (true, Some(i)) = (answered, self.slots.iter().position(|s| s.body_limit.is_some() && s.mode == Mode::Enforce)) {
            self.record_denial(host, i, &RuntimeDenial::BodyTimeout.denial());
        }
    }

    /// The body is still not whole past the bound: the stage holding the request for it
    /// refuses it (408 `body_timeout`).
    fn body_late(&mut self, host: &mut dyn Host) -> bool {
        let (Some(deadline), Some(i)) = (self.body_deadline, self.waiting_for_body()) else { return false };
        if host.now() < deadline {
            return false;
        }
        let answered = body_wait::stop(self.context).is_some_and(|w| w.answered);
        self.body_deadline = None;
        let denial = RuntimeDenial::BodyTimeout.denial();
        if answered {
            self.record_denial(host, i, &denial);
        } else {
            self.deny(host, i, &denial);
        }
        true
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
                    self.paused = Some((i, Phase::RequestHeaders));
                    return Verdict::Pause;
                }
                Settled::Stopped => return Verdict::Pause,
            }
        }
        if self.slots.iter().any(|s| s.body_limit.is_some()) && self.body_complete {
            // The whole body is here: none (headers only), or all of it arrived while a stage
            // waited on a call it dispatched.
            return self.deliver_body(host, self.body_buffered);
        }
        if self.streams_alone() && (self.body_complete || self.body_buffered > 0) {
            // What of the body is here goes to the stages reading it as it arrives.
            if let Settled::Stopped = self.stream_buffered_body(host) {
                return Verdict::Pause;
            }
        }
        // Any body a stage asked for is held in on_request_body. The headers wait for it where
        // the proxy allows (the service never sees a request a stage refuses on its body);
        // elsewhere they go on (proxy-wasm hosts turn a paused headers callback into
        // stop-all-iteration, which never delivers the body to this filter).
        if self.hold_headers && self.slots.iter().any(|s| s.body_limit.is_some()) {
            return Verdict::Pause;
        }
        Verdict::Continue
    }

    fn settle(&mut self, host: &mut dyn Host, i: usize, step: Step) -> Settled {
        match step {
            Step::Continue => {
                self.count_allowed(host, i);
                Settled::Next
            }
            Step::Pause => Settled::Wait,
            Step::NeedBody { .. } if self.body_delivered => self.deny(host, i, &RuntimeDenial::StageError.denial()),
            Step::NeedBody { max_bytes } => {
                self.slots[i].body_limit = Some(max_bytes);
                Settled::Next
            }
            Step::StreamBody if self.body_delivered => self.deny(host, i, &RuntimeDenial::StageError.denial()),
            Step::StreamBody => {
                self.slots[i].streams_body = true;
                Settled::Next
            }
            Step::CopyBody { .. } => self.deny(host, i, &RuntimeDenial::StageError.denial()),
            Step::Respond(reply) => self.respond(host, i, &reply),
            Step::Deny(denial) => self.deny(host, i, &denial),
        }
    }

    /// Answers in the upstream's place, unless the stage is in shadow mode (then the request
    /// goes on to the upstream).
    fn respond(&mut self, host: &mut dyn Host, i: usize, reply: &Reply) -> Settled {
        self.count_allowed(host, i);
        if self.slots[i].mode == Mode::Shadow {
            return Settled::Next;
        }
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        host.send_response(reply.status, &headers, &reply.body);
        Settled::Stopped
    }

    fn count_allowed(&mut self, host: &mut dyn Host, i: usize) {
        let slot = &mut self.slots[i];
        if slot.outcome == Outcome::NotReached {
            slot.outcome = Outcome::Allowed;
        }
        count_decision(host, slot.name, Decision::Allowed, slot.route.as_deref(), None);
    }

    /// Counts and logs a denial; `true` when it is enforced (not shadow mode).
    fn record_denial(&mut self, host: &mut dyn Host, i: usize, denial: &Denial) -> bool {
        let slot = &mut self.slots[i];
        slot.body_limit = None;
        slot.streams_body = false;
        slot.response_body_limit = None;
        slot.response_copy_limit = None;
        let shadow = slot.mode == Mode::Shadow;
        let decision = if shadow { Decision::ShadowDenied } else { Decision::Denied };
        slot.outcome = if shadow { Outcome::ShadowDenied(denial.reason) } else { Outcome::Denied(denial.reason) };
        count_decision(host, slot.name, decision, slot.route.as_deref(), Some(denial.reason));
        host.log(LogLevel::Info, &log_line(slot.name, slot.route.as_deref(), &self.request, denial, shadow));
        !shadow
    }

    /// Answers with the denial, unless the stage is in shadow mode (then the request goes on).
    fn deny(&mut self, host: &mut dyn Host, i: usize, denial: &Denial) -> Settled {
        if !self.record_denial(host, i, denial) {
            return Settled::Next;
        }
        send_denial(host, denial, self.request.request_id.as_deref(), self.request.is_grpc());
        Settled::Stopped
    }

    /// A body chunk arrived; `body_size` is the size buffered so far.
    pub fn on_request_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) -> Verdict {
        if !end_of_stream && self.body_late(host) {
            return Verdict::Pause;
        }
        let verdict = self.request_body(host, body_size, end_of_stream);
        self.track_body_wait(host);
        verdict
    }

    fn request_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) -> Verdict {
        self.body_complete = end_of_stream;
        self.body_buffered = body_size;
        if matches!(self.paused, Some((_, Phase::RequestHeaders))) {
            // A stage is still deciding on the headers (its JWKS fetch or fleet call in flight):
            // going on here would release the headers, and the request, before it decided. The
            // body waits in the proxy's buffer; the headers phase resumes with it.
            return Verdict::Pause;
        }
        if self.streams_alone() {
            // Each chunk was let through before this one: the proxy holds just this one.
            if let Settled::Stopped = self.stream_buffered_body(host) {
                return Verdict::Pause;
            }
        }
        if let Settled::Stopped = self.check_body_head(host, body_size) {
            return Verdict::Pause;
        }
        for i in 0..self.slots.len() {
            let Some(max_bytes) = self.slots[i].body_limit else { continue };
            if body_size > max_bytes {
                let denial = BodyError::TooLarge { max_bytes }.denial();
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

    /// Shows the start of the body arriving to each stage holding it
    /// ([`Stage::on_request_body_head`]).
    fn check_body_head(&mut self, host: &mut dyn Host, body_size: usize) -> Settled {
        if body_size == 0 || self.slots.iter().all(|s| s.body_limit.is_none()) {
            return Settled::Next;
        }
        let Some(head) = host.request_body(0, body_size.min(BODY_HEAD_BYTES)) else { return Settled::Next };
        for i in 0..self.slots.len() {
            if self.slots[i].body_limit.is_none() {
                continue;
            }
            let step = {
                let slot = &mut self.slots[i];
                self.request.route = slot.route.clone();
                slot.stage.on_request_body_head(host, &mut self.request, &head, body_size)
            };
            let settled = match step {
                Step::Continue => Settled::Next,
                Step::Deny(denial) => self.deny(host, i, &denial),
                _ => self.deny(host, i, &RuntimeDenial::StageError.denial()),
            };
            if let Settled::Stopped = settled {
                return Settled::Stopped;
            }
        }
        Settled::Next
    }

    /// Stages read the body as it arrives and none holds it whole (then they get it whole
    /// instead, from [`Filter::deliver_body`]).
    fn streams_alone(&self) -> bool {
        self.slots.iter().any(|s| s.streams_body) && self.slots.iter().all(|s| s.body_limit.is_none())
    }

    /// Gives the body bytes the proxy holds to the stages reading the body as it arrives (the
    /// end of the stream with the last of them); an unreadable chunk is refused by each.
    fn stream_buffered_body(&mut self, host: &mut dyn Host) -> Settled {
        let size = self.body_buffered;
        let chunk = if size == 0 { Some(Vec::new()) } else { host.request_body(0, size).filter(|c| c.len() == size) };
        self.stream_chunk(host, chunk.as_deref(), self.body_complete)
    }

    fn stream_chunk(&mut self, host: &mut dyn Host, chunk: Option<&[u8]>, end_of_stream: bool) -> Settled {
        for i in 0..self.slots.len() {
            if !self.slots[i].streams_body {
                continue;
            }
            let step = match chunk {
                Some(chunk) => {
                    let slot = &mut self.slots[i];
                    self.request.route = slot.route.clone();
                    slot.stage.on_request_chunk(host, &mut self.request, chunk, end_of_stream)
                }
                None => Step::Deny(RuntimeDenial::BodyUnavailable.denial()),
            };
            match step {
                Step::Continue if end_of_stream => {
                    self.slots[i].streams_body = false;
                    self.count_allowed(host, i);
                }
                Step::Continue => {}
                Step::Deny(denial) => {
                    if let Settled::Stopped = self.deny(host, i, &denial) {
                        return Settled::Stopped;
                    }
                }
                _ => {
                    if let Settled::Stopped = self.deny(host, i, &RuntimeDenial::StageError.denial()) {
                        return Settled::Stopped;
                    }
                }
            }
        }
        Settled::Next
    }

    fn deliver_body(&mut self, host: &mut dyn Host, body_size: usize) -> Verdict {
        self.body_delivered = true;
        let raw = if body_size == 0 { Vec::new() } else { host.request_body(0, body_size).unwrap_or_default() };
        if self.slots.iter().any(|s| s.streams_body) {
            // With a stage holding the whole body, the stages reading it as it arrives get it
            // whole, first (in its wire form: a stream's own framing).
            if let Settled::Stopped = self.stream_chunk(host, Some(&raw), true) {
                return Verdict::Pause;
            }
        }
        let limit = self.slots.iter().filter_map(|s| s.body_limit).min().unwrap_or(0);
        let read = if raw.len() == body_size { decoded(&self.request, raw, limit) } else { Err(None) };
        match read {
            Ok(body) => {
                self.held_body = body;
                self.run_request_body(host, 0)
            }
            Err(e) => {
                let denial = match e {
                    Some(e) => e.denial(),
                    None => RuntimeDenial::BodyUnavailable.denial(),
                };
                for i in 0..self.slots.len() {
                    if self.slots[i].body_limit.take().is_some() {
                        if let Settled::Stopped = self.deny(host, i, &denial) {
                            return Verdict::Pause;
                        }
                    }
                }
                Verdict::Continue
            }
        }
    }

    /// Gives the held body to each stage from `from` on that asked for it.
    fn run_request_body(&mut self, host: &mut dyn Host, from: usize) -> Verdict {
        for i in from..self.slots.len() {
            if self.slots[i].body_limit.take().is_none() {
                continue;
            }
            let step = {
                let slot = &mut self.slots[i];
                self.request.route = slot.route.clone();
                slot.stage.on_request_body(host, &mut self.request, &self.held_body)
            };
            match self.settle(host, i, step) {
                Settled::Next => {}
                Settled::Wait => {
                    self.paused = Some((i, Phase::RequestBody));
                    return Verdict::Pause;
                }
                Settled::Stopped => return Verdict::Pause,
            }
        }
        self.held_body = Vec::new();
        Verdict::Continue
    }

    /// The response headers arrived; `end_of_stream`: the response has no body.
    pub fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Verdict {
        self.response_complete = end_of_stream;
        // Headers that went on before the body (where the proxy cannot hold them) reached a
        // service that answered at once: its answer to a request not checked yet does not
        // leave, unless it is a refusal of its own. (Envoy delivers no more request body once
        // the upstream has answered, so waiting for the checks would hang.) Envoy's own answers
        // (a redirect route, a later filter's refusal) did not run anything and pass.
        let unchecked = self.slots.iter().position(|s| s.body_limit.is_some()).or(match self.paused {
            Some((i, Phase::RequestBody)) => Some(i),
            _ => None,
        });
        if let Some(i) = unchecked {
            let status = host.response_header(":status").and_then(|s| s.parse::<u16>().ok());
            let from_service = || host.property(&["response", "code_details"]).is_none_or(|d| d == b"via_upstream");
            if status.is_none_or(|s| s < 400) && from_service() {
                self.paused = None;
                if let Settled::Stopped = self.deny(host, i, &RuntimeDenial::AnsweredBeforeChecked.denial()) {
                    return Verdict::Pause;
                }
            }
        }
        self.run_response_headers(host, 0)
    }

    /// The slot at `position` in response order: the last stage first, as Envoy runs encoder
    /// filters, so the answer a stage sees is the one every stage after it let through.
    fn response_slot(&self, position: usize) -> usize {
        self.slots.len() - 1 - position
    }

    /// How a stage's step on the response headers settles.
    fn settle_response(&mut self, host: &mut dyn Host, i: usize, step: Step) -> Settled {
        match step {
            Step::Continue => Settled::Next,
            Step::Pause => Settled::Wait,
            Step::NeedBody { max_bytes } => {
                self.slots[i].response_body_limit = Some(max_bytes);
                Settled::Next
            }
            Step::CopyBody { max_bytes } => {
                self.slots[i].response_copy_limit = Some(max_bytes);
                Settled::Next
            }
            Step::Respond(_) | Step::StreamBody => self.deny(host, i, &RuntimeDenial::StageError.denial()),
            // Nothing of the response has left yet: a local reply replaces it.
            Step::Deny(denial) => self.deny(host, i, &denial),
        }
    }

    fn run_response_headers(&mut self, host: &mut dyn Host, from: usize) -> Verdict {
        for position in from..self.slots.len() {
            let i = self.response_slot(position);
            let step = {
                let slot = &mut self.slots[i];
                self.request.route = slot.route.clone();
                slot.stage.on_response_headers(host, &mut self.request)
            };
            match self.settle_response(host, i, step) {
                Settled::Next => {}
                Settled::Wait => {
                    self.paused = Some((i, Phase::ResponseHeaders));
                    return Verdict::Pause;
                }
                Settled::Stopped => return Verdict::Pause,
            }
        }
        let end_of_stream = self.response_complete;
        // Response headers can only be read here (not in body callbacks).
        if self.slots.iter().any(|s| s.response_body_limit.is_some()) && response_is_encoded(host) {
            // The stages asked the upstream for `identity`; an answer coded anyway cannot be
            // read, and what cannot be read is not passed: it is replaced before it leaves.
            for i in 0..self.slots.len() {
                if self.slots[i].response_body_limit.take().is_some() {
                    if let Settled::Stopped = self.deny(host, i, &RuntimeDenial::EncodedResponse.denial()) {
                        return Verdict::Pause;
                    }
                }
            }
        }
        if end_of_stream && self.slots.iter().any(Slot::wants_response_body) {
            self.response_body = Some(Vec::new());
            return self.run_response_body(host, 0);
        }
        Verdict::Continue
    }

    /// A response body chunk arrived; `body_size` is the size buffered so far.
    pub fn on_response_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) -> Verdict {
        for i in 0..self.slots.len() {
            if self.slots[i].response_copy_limit.is_some_and(|max| body_size > max) {
                // A copy too large to keep is not kept; the body is not held for it.
                self.slots[i].response_copy_limit = None;
                let slot = &mut self.slots[i];
                self.request.route = slot.route.clone();
                slot.stage.on_response_body_too_large(host, &mut self.request);
            }
            let Some(max_bytes) = self.slots[i].response_body_limit else { continue };
            if body_size > max_bytes {
                // Too large to check is not checked: it does not pass.
                if self.deny_response_body(host, i, &RuntimeDenial::ResponseTooLarge.denial()) {
                    return Verdict::Pause;
                }
            }
        }
        if !self.slots.iter().any(Slot::wants_response_body) {
            return Verdict::Continue;
        }
        if !end_of_stream {
            return Verdict::Pause;
        }
        let body = if body_size == 0 { Some(Vec::new()) } else { host.response_body(0, body_size) };
        self.response_body = body.filter(|b| b.len() == body_size);
        self.run_response_body(host, 0)
    }

    /// Gives the buffered response body to each stage from `from` on (in response order) that
    /// asked for it.
    fn run_response_body(&mut self, host: &mut dyn Host, from: usize) -> Verdict {
        let body = self.response_body.take();
        for position in from..self.slots.len() {
            let i = self.response_slot(position);
            let checked = self.slots[i].response_body_limit.take().is_some();
            if !checked && self.slots[i].response_copy_limit.take().is_none() {
                continue;
            }
            let step = if let Some(body) = &body {
                let slot = &mut self.slots[i];
                self.request.route = slot.route.clone();
                slot.stage.on_response_body(host, &mut self.request, body)
            } else if checked {
                Step::Deny(RuntimeDenial::ResponseUnavailable.denial())
            } else {
                // A copy that cannot be read is not taken; the body still passes.
                self.request.route = self.slots[i].route.clone();
                self.slots[i].stage.on_response_body_too_large(host, &mut self.request);
                Step::Continue
            };
            match step {
                Step::Pause => {
                    self.paused = Some((i, Phase::ResponseBody));
                    self.response_body = body;
                    return Verdict::Pause;
                }
                Step::Deny(denial) if self.deny_response_body(host, i, &denial) => return Verdict::Pause,
                _ => {}
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
        send_denial(host, denial, self.request.request_id.as_deref(), self.request.is_grpc());
        true
    }

    /// The answer to an HTTP call the waiting stage dispatched.
    pub fn on_http_call_response(&mut self, host: &mut dyn Host, token: u32, response: HttpCallResponse) {
        let Some((i, phase)) = self.paused else { return };
        let step = {
            let slot = &mut self.slots[i];
            self.request.route = slot.route.clone();
            slot.stage.on_http_call_response(host, &mut self.request, token, response)
        };
        self.resume_after(host, i, phase, step);
        self.track_body_wait(host);
    }

    /// The answer to a gRPC call the waiting stage dispatched.
    pub fn on_grpc_response(&mut self, host: &mut dyn Host, token: u32, response: GrpcResponse) {
        let Some((i, phase)) = self.paused else { return };
        let step = {
            let slot = &mut self.slots[i];
            self.request.route = slot.route.clone();
            slot.stage.on_grpc_response(host, &mut self.request, token, response)
        };
        self.resume_after(host, i, phase, step);
        self.track_body_wait(host);
    }

    /// Settles the waiting stage's step and, when it lets the request go on, runs the stages
    /// after it in the same phase and resumes the stream.
    fn resume_after(&mut self, host: &mut dyn Host, i: usize, phase: Phase, step: Step) {
        if let Some(route) = self.request.route.take() {
            self.slots[i].route = Some(route);
        }
        let settled = match phase {
            Phase::ResponseHeaders => self.settle_response(host, i, step),
            Phase::RequestHeaders | Phase::RequestBody => self.settle(host, i, step),
            Phase::ResponseBody => match step {
                Step::Pause => Settled::Wait,
                Step::Deny(denial) if self.deny_response_body(host, i, &denial) => Settled::Stopped,
                _ => Settled::Next,
            },
        };
        match settled {
            Settled::Wait => {}
            Settled::Stopped => self.paused = None,
            Settled::Next => {
                self.paused = None;
                let next_in_response = self.slots.len() - i;
                let verdict = match phase {
                    Phase::RequestHeaders => self.run_request_headers(host, i + 1),
                    Phase::RequestBody => self.run_request_body(host, i + 1),
                    Phase::ResponseHeaders => self.run_response_headers(host, next_in_response),
                    Phase::ResponseBody => self.run_response_body(host, next_in_response),
                };
                if verdict == Verdict::Continue {
                    match phase {
                        Phase::ResponseHeaders | Phase::ResponseBody => host.resume_response(),
                        Phase::RequestHeaders | Phase::RequestBody => host.resume_request(),
                    }
                }
            }
        }
    }

    /// The request is over (its status and duration are known): the audit record.
    pub fn on_log(&mut self, host: &mut dyn Host) {
        self.end_body_wait(host);
        let Some(audit) = &self.audit else { return };
        let stages: Vec<StageRecord> =
            self.slots.iter().map(|s| StageRecord { stage: s.name, rule: s.route.as_deref(), outcome: s.outcome }).collect();
        crate::audit::write(host, audit, &mut self.request, &stages);
    }

    /// The stream ended: every stage releases what it holds for the request.
    pub fn on_done(&mut self, host: &mut dyn Host) {
        self.end_body_wait(host);
        for slot in &mut self.slots {
            slot.stage.on_done(host, &mut self.request);
        }
    }

}
