//! The gRPC policy as a [`Policy`] / [`Stage`].

use std::rc::Rc;

use meshward_core::principal::current_principal;
use meshward_core::workload::current_workload;
use meshward_core::{config::ConfigError, Mode, Policy, RequestState, Stage, Step};
use meshward_host::Host;

use crate::config::GrpcConfig;
use crate::decide::{authorize, check_request, find_method, Stream};
use crate::framing::{check_single_head, PREFIX};
use crate::GrpcError;
use meshward_core::caller::Caller;

#[derive(Debug)]
pub struct GrpcPolicy {
    pub config: GrpcConfig,
}

impl Policy for GrpcPolicy {
    const NAME: &'static str = "grpc";
    type Stage = GrpcStage;

    fn configure(config: &[u8], _host: &dyn Host) -> Result<Self, ConfigError> {
        GrpcConfig::parse(config).map(|config| GrpcPolicy { config })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn new_stage(policy: &Rc<Self>) -> GrpcStage {
        GrpcStage { policy: Rc::clone(policy), method: None, stream: Stream::default() }
    }
}

/// One call: the method it names, then its message.
#[derive(Debug)]
pub struct GrpcStage {
    policy: Rc<GrpcPolicy>,
    /// Index of the offered method the call names.
    method: Option<usize>,
    /// A client-streaming call's messages as they arrive.
    stream: Stream,
}

impl Stage for GrpcStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        if !request.is_grpc() {
            return Step::Deny(GrpcError::NotGrpc.denial());
        }
        let method = match find_method(&policy.config, &request.method, &request.path) {
            Ok(method) => method,
            Err(e) => return Step::Deny(e.denial()),
        };
        self.method = policy.config.methods.iter().position(|m| std::ptr::eq(m, method));
        request.route = Some(method.name.clone());
        let workload = if method.access.workloads.is_empty() { None } else { current_workload(host, request) };
        let user = if method.access.require_user && !method.public { current_principal(host, &mut request.principal) } else { None };
        if let Err(e) = authorize(method, Caller { user: user.as_deref(), workload: workload.as_deref() }) {
            return Step::Deny(e.denial());
        }
        if method.client_streaming {
            return Step::StreamBody;
        }
        // The message is read whole: one frame, at most the limit (compressed no larger).
        Step::NeedBody { max_bytes: policy.config.max_message_bytes + PREFIX }
    }

    fn on_request_body_head(&mut self, _host: &mut dyn Host, _request: &mut RequestState, head: &[u8], size: usize) -> Step {
        match check_single_head(head, size, self.policy.config.max_message_bytes) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }

    fn on_request_chunk(&mut self, host: &mut dyn Host, request: &mut RequestState, chunk: &[u8], end_of_stream: bool) -> Step {
        let policy = Rc::clone(&self.policy);
        let Some(method) = self.method.and_then(|i| policy.config.methods.get(i)) else { return Step::Continue };
        let user = if method.owner.is_empty() { None } else { current_principal(host, &mut request.principal) };
        match self.stream.take(&policy.config, method, chunk, end_of_stream, request.header("grpc-encoding"), user.as_deref()) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, request: &mut RequestState, body: &[u8]) -> Step {
        let policy = Rc::clone(&self.policy);
        let Some(method) = self.method.and_then(|i| policy.config.methods.get(i)) else { return Step::Continue };
        let user = if method.owner.is_empty() { None } else { current_principal(host, &mut request.principal) };
        match check_request(&policy.config, method, body, request.header("grpc-encoding"), user.as_deref()) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }
}
