//! proxy-wasm glue: forwards the SDK's callbacks to [`Filter`] and the [`Policy`] with
//! [`ProxyWasmHost`]. Nothing here decides anything.

use std::rc::Rc;

use meshward_core::{Denial, DenialKind, GrpcResponse, Policy};
use meshward_host::{Host, LogLevel, ProxyWasmHost};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::{send_denial, Filter, Verdict};

/// Installs the root context for policy `P`; call from `proxy_wasm::main!`.
pub fn register<P: Policy>() {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::<P> { policy: None }) });
}

struct Root<P: Policy> {
    policy: Option<Rc<P>>,
}

impl<P: Policy> Context for Root<P> {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(policy) = &self.policy {
            let mut host = ProxyWasmHost;
            let response = host.http_call_response(body_size);
            P::on_http_call_response(policy, &mut host, token, response);
        }
    }
}

impl<P: Policy> RootContext for Root<P> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let mut host = ProxyWasmHost;
        let config = self.get_plugin_configuration().unwrap_or_default();
        match P::configure(&config, &host) {
            Ok(policy) => {
                let policy = Rc::new(policy);
                P::start(&policy, &mut host);
                self.policy = Some(policy);
                host.log(LogLevel::Info, &format!("meshward_{}: configuration accepted", P::NAME));
                true
            }
            Err(e) => {
                // The previous policy (if any) stays; Envoy refuses the new configuration.
                host.log(LogLevel::Error, &format!("meshward_{}: invalid configuration: {e}", P::NAME));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(policy) = &self.policy {
            P::on_tick(policy, &mut ProxyWasmHost);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match &self.policy {
            Some(policy) => Box::new(HttpFilter { filter: Filter::new(policy) }),
            None => Box::new(Unconfigured),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HttpFilter<P: Policy> {
    filter: Filter<P>,
}

impl<P: Policy> Context for HttpFilter<P> {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let mut host = ProxyWasmHost;
        let response = host.http_call_response(body_size);
        self.filter.on_http_call_response(&mut host, token, response);
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let mut host = ProxyWasmHost;
        let message = if status_code == 0 { host.grpc_call_response(response_size) } else { Vec::new() };
        self.filter.on_grpc_response(&mut host, token, GrpcResponse { status: status_code, message });
    }
}

impl<P: Policy> HttpContext for HttpFilter<P> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_request_headers(&mut ProxyWasmHost, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_request_body(&mut ProxyWasmHost, body_size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_response_headers(&mut ProxyWasmHost, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_response_body(&mut ProxyWasmHost, body_size, end_of_stream))
    }
}

fn action(verdict: Verdict) -> Action {
    match verdict {
        Verdict::Continue => Action::Continue,
        // In a body callback, Pause buffers the body (StopIterationAndBuffer).
        Verdict::Pause => Action::Pause,
    }
}

/// Serves requests when no valid configuration was ever applied: deny, never allow.
struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = ProxyWasmHost;
        let denial = Denial::new(DenialKind::Unavailable, "filter_unconfigured", "the filter has no valid configuration");
        let request_id = host.request_header("x-request-id");
        send_denial(&mut host, &denial, request_id.as_deref());
        Action::Pause
    }
}
