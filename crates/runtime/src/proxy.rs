//! proxy-wasm glue: forwards the SDK's callbacks to a [`Plan`] (root) and a [`Filter`] (each
//! request) with [`ProxyWasmHost`]. Nothing here decides anything.

use std::rc::Rc;
use std::time::Duration;

use meshward_core::config::fingerprint;
use meshward_core::stats::{flush_decisions, publish_configuration};
use meshward_core::GrpcResponse;
use meshward_host::{Host, LogLevel, ProxyWasmHost};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::{body_wait, send_denial, Audit, Filter, Plan, RuntimeDenial, Verdict, HOLD_HEADERS_ENV};

/// How often the counts of allowed decisions added up in the VM are written to Envoy's stats
/// (a policy that needs ticks of its own asks for its period when it starts).
const COUNTER_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Installs the root context for plan `T`; call from `proxy_wasm::main!`.
pub fn register<T: Plan>() {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root::<T> { context_id, plan: None, hold_headers: false, audit: None, body_timeout: body_wait::DEFAULT_BODY_TIMEOUT })
    });
}

struct Root<T: Plan> {
    /// The proxy's id of this root context (calls made from a tick are answered here).
    context_id: u32,
    plan: Option<T>,
    /// Request headers wait for the body decisions ([`HOLD_HEADERS_ENV`]).
    hold_headers: bool,
    /// The plan's audit settings with the fingerprint of its configuration.
    audit: Option<Rc<Audit>>,
    /// How long a request held for its body waits for it ([`body_wait::BODY_TIMEOUT_ENV`]).
    body_timeout: Duration,
}

impl<T: Plan> Context for Root<T> {
    /// The VM stops: nothing counted is left unwritten.
    fn on_done(&mut self) -> bool {
        flush_decisions(&mut ProxyWasmHost);
        true
    }

    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(plan) = &self.plan {
            let mut host = ProxyWasmHost;
            let response = host.http_call_response(body_size);
            plan.on_http_call_response(&mut host, token, &response);
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if let Some(plan) = &self.plan {
            let mut host = ProxyWasmHost;
            let message = if status_code == 0 { host.grpc_call_response(response_size) } else { Vec::new() };
            plan.on_grpc_call_response(&mut host, token, &GrpcResponse { status: status_code, message });
        }
    }
}

impl<T: Plan> RootContext for Root<T> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let mut host = ProxyWasmHost;
        let config = self.get_plugin_configuration().unwrap_or_default();
        let started = host.now();
        let body_timeout = match body_wait::body_timeout(host.env_var(body_wait::BODY_TIMEOUT_ENV).as_deref()) {
            Ok(timeout) => timeout,
            Err(e) => {
                host.log(LogLevel::Error, &format!("{}: invalid configuration: {e}", T::module_name()));
                return false;
            }
        };
        match T::configure(&config, &host) {
            Ok(plan) => {
                let audit = match plan.audit().map(|settings| Audit::new(settings, fingerprint(&config), &|name| host.env_var(name))).transpose() {
                    Ok(audit) => audit.map(Rc::new),
                    Err(e) => {
                        host.log(LogLevel::Error, &format!("{}: invalid configuration: {e}", T::module_name()));
                        return false;
                    }
                };
                // How long compiling the configuration took in this VM (`make bench` reads it).
                let micros = host.now().duration_since(started).map(|d| d.as_micros()).unwrap_or(0);
                host.set_tick_period(COUNTER_FLUSH_PERIOD);
                publish_configuration(&mut host, T::module_name(), &config);
                plan.start(&mut host);
                self.audit = audit;
                self.plan = Some(plan);
                self.hold_headers = host.env_var(HOLD_HEADERS_ENV).is_some_and(|v| v == "true");
                self.body_timeout = body_timeout;
                host.log(LogLevel::Info, &format!("{}: configuration accepted in {}.{:03} ms", T::module_name(), micros / 1000, micros % 1000));
                true
            }
            Err(e) => {
                // The previous plan (if any) stays; Envoy refuses the new configuration.
                host.log(LogLevel::Error, &format!("{}: invalid configuration: {e}", T::module_name()));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let mut host = ProxyWasmHost;
        // Requests whose body stopped arriving are answered in their own context.
        let late = body_wait::expired(host.now());
        for wait in &late {
            if proxy_wasm::hostcalls::set_effective_context(wait.context).is_ok() {
                send_denial(&mut host, &RuntimeDenial::BodyTimeout.denial(), wait.request_id.as_deref(), wait.grpc);
            }
        }
        if !late.is_empty() {
            // Back to this context: what the tick does next (a JWKS refresh) is answered here.
            let _ = proxy_wasm::hostcalls::set_effective_context(self.context_id);
        }
        flush_decisions(&mut ProxyWasmHost);
        if let Some(plan) = &self.plan {
            plan.on_tick(&mut ProxyWasmHost);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match &self.plan {
            Some(plan) => Box::new(HttpFilter::<T> {
                filter: plan
                    .new_filter()
                    .holding_request_headers(self.hold_headers)
                    .auditing(self.audit.clone())
                    .in_context(context_id, self.body_timeout),
                plan: std::marker::PhantomData,
            }),
            None => Box::new(Unconfigured),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HttpFilter<T: Plan> {
    filter: Filter,
    plan: std::marker::PhantomData<T>,
}

impl<T: Plan> Context for HttpFilter<T> {
    fn on_done(&mut self) -> bool {
        self.filter.on_done(&mut ProxyWasmHost);
        true
    }

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

impl<T: Plan> HttpContext for HttpFilter<T> {
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

    fn on_log(&mut self) {
        // Known when compiling: a module that never audits does not carry the record writer.
        if T::WRITES_AUDIT_RECORDS {
            self.filter.on_log(&mut ProxyWasmHost);
        }
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
        let denial = RuntimeDenial::FilterUnconfigured.denial();
        let request_id = host.request_header("x-request-id");
        let grpc = host.request_header("content-type").is_some_and(|t| meshward_core::request::is_grpc(&t));
        send_denial(&mut host, &denial, request_id.as_deref(), grpc);
        Action::Pause
    }
}
