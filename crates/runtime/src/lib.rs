//! Runs a [`Policy`] as a proxy-wasm HTTP filter.
//!
//! Everything that is the same for every meshward filter lives here, once: reading the request
//! basics, turning a [`Denial`] into a response, shadow mode, one log line per denial, and
//! counters per decision and reason. [`Filter`] holds that logic against the [`Host`] trait so
//! it is tested with the fake host; the proxy-wasm glue (wasm32 only) only forwards calls.
//!
//! Counters (visible in Envoy's `/stats`; with the `stats_tags` in `envoy/envoy.yaml`,
//! `reason` becomes a Prometheus label):
//! - `meshward_<name>_allowed_total`
//! - `meshward_<name>_denied_total[.route.<route>].reason.<reason>`
//! - `meshward_<name>_shadow_denied_total[.route.<route>].reason.<reason>` (shadow: would have denied)
//!
//! `.route.<route>` appears when the matching rule has a name.

use std::rc::Rc;

use meshward_core::route::canonical_path;
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
    /// Wait: a call is in flight, or a local response was sent.
    Pause,
}

/// Counter name for a decision of the policy `name`, on a named route or not.
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

/// One request through one policy.
pub struct Filter<P: Policy> {
    policy: Rc<P>,
    stage: P::Stage,
    request: RequestState,
    /// The stage asked for the body and it is not complete yet: the limit it gave.
    awaiting_body: Option<usize>,
    /// The request has no more body to come (end of stream seen).
    body_complete: bool,
    /// `on_request_body` was already delivered to the stage.
    body_delivered: bool,
    /// The stage asked for the response body: the limit it gave.
    awaiting_response_body: Option<usize>,
}

impl<P: Policy> Filter<P> {
    pub fn new(policy: &Rc<P>) -> Self {
        Filter {
            policy: Rc::clone(policy),
            stage: P::new_stage(policy),
            request: RequestState::default(),
            awaiting_body: None,
            body_complete: false,
            body_delivered: false,
            awaiting_response_body: None,
        }
    }

    /// The request state the stage saw (principal included), for tests and chaining.
    pub fn request(&self) -> &RequestState {
        &self.request
    }

    /// `end_of_stream`: the request has no body.
    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Verdict {
        self.body_complete = end_of_stream;
        self.request.request_id = host.request_header("x-request-id");
        self.request.method = host.request_header(":method").unwrap_or_default();
        self.request.path = host.request_header(":path").unwrap_or_default();
        let step = self.stage.on_request_headers(host, &mut self.request);
        self.apply(host, step)
    }

    /// A body chunk arrived; `body_size` is the size buffered so far.
    pub fn on_request_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) -> Verdict {
        self.body_complete = end_of_stream;
        let Some(max_bytes) = self.awaiting_body else {
            return Verdict::Continue;
        };
        if body_size > max_bytes {
            self.awaiting_body = None;
            let denial = Denial::new(
                DenialKind::PayloadTooLarge,
                "body_too_large",
                format!("the request body is larger than {max_bytes} bytes"),
            );
            return self.apply(host, Step::Deny(denial));
        }
        if !end_of_stream {
            return Verdict::Pause;
        }
        self.deliver_body(host, body_size)
    }

    fn deliver_body(&mut self, host: &mut dyn Host, body_size: usize) -> Verdict {
        self.awaiting_body = None;
        self.body_delivered = true;
        let body = if body_size == 0 { Vec::new() } else { host.request_body(0, body_size).unwrap_or_default() };
        if body.len() != body_size {
            let denial = Denial::new(DenialKind::Unavailable, "body_unavailable", "the request body could not be read");
            return self.apply(host, Step::Deny(denial));
        }
        let step = self.stage.on_request_body(host, &mut self.request, &body);
        self.apply(host, step)
    }

    /// The response headers arrived; `end_of_stream`: the response has no body.
    pub fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Verdict {
        match self.stage.on_response_headers(host, &mut self.request) {
            Step::Continue | Step::Pause => Verdict::Continue,
            Step::Deny(denial) => self.deny(host, &denial),
            Step::NeedBody { .. } if end_of_stream => self.deliver_response_body(host, 0),
            Step::NeedBody { max_bytes } => {
                self.awaiting_response_body = Some(max_bytes);
                Verdict::Continue
            }
        }
    }

    /// A response body chunk arrived; `body_size` is the size buffered so far.
    pub fn on_response_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) -> Verdict {
        let Some(max_bytes) = self.awaiting_response_body else {
            return Verdict::Continue;
        };
        if body_size > max_bytes {
            // Too large to check is not checked: it does not pass.
            self.awaiting_response_body = None;
            let denial = Denial::new(DenialKind::Unavailable, "response_too_large", "the response is too large to be checked");
            return self.deny_response_body(host, &denial);
        }
        if !end_of_stream {
            return Verdict::Pause;
        }
        self.deliver_response_body(host, body_size)
    }

    fn deliver_response_body(&mut self, host: &mut dyn Host, body_size: usize) -> Verdict {
        self.awaiting_response_body = None;
        let body = if body_size == 0 { Vec::new() } else { host.response_body(0, body_size).unwrap_or_default() };
        let step = if body.len() == body_size {
            self.stage.on_response_body(host, &mut self.request, &body)
        } else {
            Step::Deny(Denial::new(DenialKind::Unavailable, "body_unavailable", "the response body could not be read"))
        };
        match step {
            Step::Deny(denial) => self.deny_response_body(host, &denial),
            _ => Verdict::Continue,
        }
    }

    /// A denial after the response status went out. A local reply is no longer possible, so
    /// asking for one makes Envoy reset the stream: the client gets a broken response and
    /// none of the body, which cannot be mistaken for success.
    fn deny_response_body(&mut self, host: &mut dyn Host, denial: &Denial) -> Verdict {
        if !self.record_denial(host, denial) {
            return Verdict::Continue;
        }
        send_denial(host, denial, self.request.request_id.as_deref());
        Verdict::Pause
    }

    /// The answer to an HTTP call this request's stage dispatched.
    pub fn on_http_call_response(&mut self, host: &mut dyn Host, token: u32, response: HttpCallResponse) {
        let step = self.stage.on_http_call_response(host, &mut self.request, token, response);
        if self.apply(host, step) == Verdict::Continue {
            host.resume_request();
        }
    }

    /// The answer to a gRPC call this request's stage dispatched.
    pub fn on_grpc_response(&mut self, host: &mut dyn Host, token: u32, response: GrpcResponse) {
        let step = self.stage.on_grpc_response(host, &mut self.request, token, response);
        if self.apply(host, step) == Verdict::Continue {
            host.resume_request();
        }
    }

    fn apply(&mut self, host: &mut dyn Host, step: Step) -> Verdict {
        match step {
            Step::Continue => {
                host.increment_counter(&counter_name(P::NAME, "allowed", self.request.route.as_deref(), None), 1);
                Verdict::Continue
            }
            Step::Pause => Verdict::Pause,
            Step::NeedBody { .. } if self.body_delivered => {
                let denial = Denial::new(DenialKind::Unavailable, "stage_error", "the filter asked for the body twice");
                self.apply(host, Step::Deny(denial))
            }
            Step::NeedBody { max_bytes } => {
                if self.body_complete {
                    // Headers-only request: the whole body is the empty one.
                    return self.deliver_body(host, 0);
                }
                // Headers go on; the body is held (buffered) until it is complete and verified.
                // proxy-wasm hosts turn a paused headers callback into "stop all iteration",
                // which would never deliver the body to this filter.
                self.awaiting_body = Some(max_bytes);
                Verdict::Continue
            }
            Step::Deny(denial) => self.deny(host, &denial),
        }
    }

    /// Counts and logs a denial; `true` when it is enforced (not shadow mode).
    fn record_denial(&mut self, host: &mut dyn Host, denial: &Denial) -> bool {
        let shadow = self.policy.mode() == Mode::Shadow;
        let decision = if shadow { "shadow_denied" } else { "denied" };
        host.increment_counter(&counter_name(P::NAME, decision, self.request.route.as_deref(), Some(denial.reason)), 1);
        host.log(LogLevel::Info, &self.denial_log_line(denial, shadow));
        !shadow
    }

    /// Answers with the denial (unless in shadow mode, where the request goes on).
    fn deny(&mut self, host: &mut dyn Host, denial: &Denial) -> Verdict {
        if !self.record_denial(host, denial) {
            return Verdict::Continue;
        }
        send_denial(host, denial, self.request.request_id.as_deref());
        Verdict::Pause
    }

    /// One JSON line per denial: request id, principal when known, route, reason.
    fn denial_log_line(&self, denial: &Denial, shadow: bool) -> String {
        let path = canonical_path(&self.request.path).unwrap_or_else(|_| "<invalid>".to_string());
        let principal = self.request.principal.as_ref().and_then(|p| p.subject.clone());
        let line = serde_json::json!({
            "filter": format!("meshward_{}", P::NAME),
            "decision": if shadow { "shadow_deny" } else { "deny" },
            "status": denial.status(),
            "reason": denial.reason,
            "request_id": self.request.request_id,
            "principal": principal,
            "route": self.request.route,
            "method": self.request.method,
            "path": path,
        });
        format!("meshward_{}: {line}", P::NAME)
    }
}

/// Sends the local response for a denial: status, challenge headers, JSON body.
pub fn send_denial(host: &mut dyn Host, denial: &Denial, request_id: Option<&str>) {
    let extra = denial.headers();
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
    host.send_response(denial.status(), &headers, &denial.body(request_id));
}

