//! What a module runs: one policy, or several as stages of one filter (the bundle).

use std::rc::Rc;

use meshward_core::audit::AuditConfig;
use meshward_core::config::ConfigError;
use meshward_core::{GrpcResponse, Policy};
use meshward_host::{Host, HttpCallResponse};

use crate::filter::{Filter, Slot};

/// A policy with its type erased, so a list of different policies can run in one filter.
pub trait AnyPolicy {
    fn name(&self) -> &'static str;
    fn start(&self, host: &mut dyn Host);
    fn on_tick(&self, host: &mut dyn Host);
    fn on_http_call_response(&self, host: &mut dyn Host, token: u32, response: HttpCallResponse);
    fn on_grpc_call_response(&self, host: &mut dyn Host, token: u32, response: &GrpcResponse);
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
    fn on_grpc_call_response(&self, host: &mut dyn Host, token: u32, response: &GrpcResponse) {
        P::on_grpc_call_response(self, host, token, response);
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
    /// Whether this kind of module can write audit records at all (the bundle).
    const WRITES_AUDIT_RECORDS: bool = false;
    /// The audit settings, when this plan writes audit records (the bundle's `audit`).
    fn audit(&self) -> Option<AuditConfig> {
        None
    }

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
    fn on_grpc_call_response(&self, host: &mut dyn Host, token: u32, response: &GrpcResponse) {
        for p in self.policies() {
            p.on_grpc_call_response(host, token, response);
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
            "idempotency" => "meshward_idempotency",
            "grpc" => "meshward_grpc",
            "graphql" => "meshward_graphql",
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
