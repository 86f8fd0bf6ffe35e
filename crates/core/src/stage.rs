//! The trait every policy implements, so one runtime drives any of them.
//!
//! A [`Policy`] is the compiled configuration of one filter, built once per VM at
//! `on_configure`, plus whatever per-VM state it keeps (a JWKS cache). For each request it
//! makes a [`Stage`], which walks the request through the policy and answers with a [`Step`].

use std::rc::Rc;

use meshward_host::{Host, HttpCallResponse};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::Denial;
pub use crate::request::RequestState;

/// Whether a policy's denials are enforced or only counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Evaluate, count and log, but let the request through (canaries on real traffic).
    Shadow,
}

/// What a stage decided about the request so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// This stage allows the request.
    Continue,
    /// The stage is waiting for an HTTP or gRPC call it dispatched; the request (or, from
    /// `on_response_headers`, the response) waits too.
    Pause,
    /// The request is refused.
    Deny(Denial),
    /// Buffer the whole body, then call [`Stage::on_request_body`]; no body byte reaches the
    /// upstream before that decision. Bodies over `max_bytes` are refused with 413. The request
    /// headers wait too where the proxy allows it (Envoy's `allow_on_headers_stop_iteration`);
    /// elsewhere they go on first.
    NeedBody { max_bytes: usize },
    /// From `on_request_headers` only: read the request body as it arrives (a gRPC stream's
    /// messages): [`Stage::on_request_chunk`] gets every byte once, in order, and what it lets
    /// through goes on to the upstream at once; a [`Step::Deny`] ends the request, and the bytes
    /// of that chunk never reach the upstream. The headers go on first.
    StreamBody,
    /// From `on_response_headers` only: show the whole response body to
    /// [`Stage::on_response_body`] if it is at most `max_bytes`, as it is (content coding
    /// included). A larger one passes on unread and [`Stage::on_response_body_too_large`] is
    /// called instead. Nothing is refused for its size.
    CopyBody { max_bytes: usize },
    /// From the request phases only: answer in the upstream's place (a stored answer replayed).
    /// Not a refusal: counted as allowed; the stages after this one do not run. In shadow mode
    /// the request goes on to the upstream instead.
    Respond(Reply),
}

/// How many bytes of a held body [`Stage::on_request_body_head`] sees.
pub const BODY_HEAD_BYTES: usize = 8;

/// A response a stage gives in the upstream's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One request's walk through a policy.
pub trait Stage {
    /// Called for every request before any stage decides, refused ones included: removes
    /// what clients must not set (headers only meshward writes). Shadow mode relies on it.
    fn scrub(&mut self, _host: &mut dyn Host, _request: &mut RequestState) {}

    /// Called once the request headers are known, unless the request model refused the
    /// request ([`RequestState::refusal`]).
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step;

    /// Called once with the whole request body, after this stage returned [`Step::NeedBody`].
    fn on_request_body(&mut self, _host: &mut dyn Host, _request: &mut RequestState, _body: &[u8]) -> Step {
        Step::Continue
    }

    /// Called as a body this stage holds ([`Step::NeedBody`]) arrives, before its size is
    /// checked: its first bytes (up to [`BODY_HEAD_BYTES`]) and its size so far. A stage refuses
    /// here what the start already tells (a gRPC message announced larger than allowed), so a
    /// sender is answered without the rest being waited for.
    fn on_request_body_head(&mut self, _host: &mut dyn Host, _request: &mut RequestState, _head: &[u8], _size: usize) -> Step {
        Step::Continue
    }

    /// Called with each piece of the request body as it arrives, after this stage returned
    /// [`Step::StreamBody`]; `end_of_stream` with the last (possibly empty) piece.
    fn on_request_chunk(&mut self, _host: &mut dyn Host, _request: &mut RequestState, _chunk: &[u8], _end_of_stream: bool) -> Step {
        Step::Continue
    }

    /// Called once the response headers are known (`:status` included). [`Step::Deny`] here
    /// replaces the response before anything of it reached the client. Stages see the response
    /// in reverse order, as Envoy's encoder filters do: the first stage sees it last, after
    /// every later stage's checks.
    fn on_response_headers(&mut self, _host: &mut dyn Host, _request: &mut RequestState) -> Step {
        Step::Continue
    }

    /// Called once with the whole response body, after `on_response_headers` returned
    /// [`Step::NeedBody`] or [`Step::CopyBody`]; the body is held until then, and while the
    /// stage waits on a call it dispatched here ([`Step::Pause`]). The response status has
    /// already been sent (proxy-wasm cannot hold response headers while reading the body), so a
    /// denial here resets the stream: the client never receives the body.
    fn on_response_body(&mut self, _host: &mut dyn Host, _request: &mut RequestState, _body: &[u8]) -> Step {
        Step::Continue
    }

    /// Called instead of `on_response_body` after [`Step::CopyBody`] when the body turned out
    /// larger than asked for; the body passes on unread.
    fn on_response_body_too_large(&mut self, _host: &mut dyn Host, _request: &mut RequestState) {}

    /// Called with the answer to an HTTP call this stage dispatched while it returned
    /// [`Step::Pause`]. The default denies nothing and continues.
    fn on_http_call_response(
        &mut self,
        _host: &mut dyn Host,
        _request: &mut RequestState,
        _token: u32,
        _response: HttpCallResponse,
    ) -> Step {
        Step::Continue
    }

    /// Called once when the stream ends, however it ended (answered, refused by a later stage,
    /// reset by either side): releases what the stage holds for the request. Nothing can be
    /// answered any more; calls dispatched here are best effort.
    fn on_done(&mut self, _host: &mut dyn Host, _request: &mut RequestState) {}

    /// Called with the answer to a gRPC call this stage dispatched while it returned
    /// [`Step::Pause`].
    fn on_grpc_response(&mut self, _host: &mut dyn Host, _request: &mut RequestState, _token: u32, _response: GrpcResponse) -> Step {
        Step::Continue
    }
}

/// The answer to a gRPC call: `status` 0 is OK; anything else (unavailable, deadline
/// exceeded, ...) is a failed call whose `message` is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcResponse {
    pub status: u32,
    pub message: Vec<u8>,
}

/// A filter's compiled configuration and per-VM state.
pub trait Policy: Sized + 'static {
    /// Short name: metrics are `meshward_<NAME>_...`, log lines start with `meshward_<NAME>`.
    const NAME: &'static str;
    type Stage: Stage;

    /// Builds the policy from the filter's JSON configuration, refusing it whole on any error.
    /// `host` gives access to the VM environment for secrets.
    fn configure(config: &[u8], host: &dyn Host) -> Result<Self, ConfigError>;

    fn mode(&self) -> Mode;

    /// Called once after a successful `configure` (schedule ticks, start fetches).
    fn start(_policy: &Rc<Self>, _host: &mut dyn Host) {}

    /// The periodic tick asked for with [`Host::set_tick_period`].
    fn on_tick(_policy: &Rc<Self>, _host: &mut dyn Host) {}

    /// The answer to an HTTP call the policy (not a request) dispatched.
    fn on_http_call_response(
        _policy: &Rc<Self>,
        _host: &mut dyn Host,
        _token: u32,
        _response: HttpCallResponse,
    ) {
    }

    /// The answer to a gRPC call the policy (not a request) dispatched.
    fn on_grpc_call_response(_policy: &Rc<Self>, _host: &mut dyn Host, _token: u32, _response: &GrpcResponse) {}

    /// A stage for one new request.
    fn new_stage(policy: &Rc<Self>) -> Self::Stage;
}
