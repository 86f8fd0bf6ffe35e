//! The ownership policy as a [`Policy`] / [`Stage`].

use std::rc::Rc;

use meshward_core::principal::current_principal;
use meshward_core::workload::current_workload;
use meshward_core::request::Unreadable;
use meshward_core::{config::ConfigError, Mode, Policy, Principal, RequestState, Stage, Step};
use meshward_core::stats::{count, Counter};
use meshward_host::{Host, LogLevel};

use meshward_core::config::Unmatched;

use crate::config::OwnershipConfig;
use crate::decide::{authorize_request, check_body, check_response, find_rule, Authorized};
use meshward_core::caller::Caller;
use crate::OwnershipError;

#[derive(Debug)]
pub struct OwnershipPolicy {
    pub config: OwnershipConfig,
}

impl Policy for OwnershipPolicy {
    const NAME: &'static str = "ownership";
    type Stage = OwnershipStage;

    fn configure(config: &[u8], _host: &dyn Host) -> Result<Self, ConfigError> {
        OwnershipConfig::parse(config).map(|config| OwnershipPolicy { config })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn new_stage(policy: &Rc<Self>) -> OwnershipStage {
        OwnershipStage { policy: Rc::clone(policy), rule: None, check_body: false, check_response: false }
    }
}

/// One request's walk: request checks, then (when the rule says so) body and response.
#[derive(Debug)]
pub struct OwnershipStage {
    policy: Rc<OwnershipPolicy>,
    rule: Option<usize>,
    check_body: bool,
    check_response: bool,
}

fn principal(host: &dyn Host, request: &mut RequestState) -> Option<Rc<Principal>> {
    current_principal(host, &mut request.principal)
}

impl OwnershipStage {
    fn rule(&self) -> Option<&crate::config::Rule> {
        self.rule.and_then(|i| self.policy.config.rules.get(i))
    }
}

impl Stage for OwnershipStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        let Some((rule, captures)) = find_rule(&policy.config, request.route_method(), &request.canonical) else {
            return match policy.config.unmatched {
                Unmatched::Allow => Step::Continue,
                Unmatched::Deny => Step::Deny(OwnershipError::RouteNotCovered.denial()),
            };
        };
        self.rule = policy.config.rules.iter().position(|r| std::ptr::eq(r, rule));
        request.route = rule.name.clone();
        // The user is read only for rules that need one (filter state is a hostcall away).
        let principal = if rule.access.require_user && !rule.public { principal(host, request) } else { None };
        // The captured ids are the request's objects (the audit record names them): kept once.
        request.objects = captures;
        // The peer certificate is read only for rules that name workloads.
        let workload = if rule.access.workloads.is_empty() { None } else { current_workload(host, request) };
        let seen: &RequestState = request;
        let header = |name: &str| -> Option<Vec<String>> {
            let values: Vec<String> = seen.header_values(name).map(str::to_string).collect();
            (!values.is_empty()).then_some(values)
        };
        let caller = Caller { user: principal.as_deref(), workload: workload.as_deref() };
        match authorize_request(rule, &seen.objects, caller, &seen.path, &header) {
            Err(e) => Step::Deny(e.denial()),
            Ok(Authorized::Public) => Step::Continue,
            Ok(Authorized::Bypassed) => {
                let line = serde_json::json!({
                    "filter": "meshward_ownership", "decision": "bypass", "route": rule.name,
                    "principal": principal.as_ref().and_then(|p| p.subject.clone()),
                    "request_id": request.request_id, "method": request.method, "path": request.canonical,
                });
                host.log(LogLevel::Info, &format!("meshward_ownership: {line}"));
                count(host, Counter::OwnershipBypass);
                Step::Continue
            }
            Ok(Authorized::Checked { check_body, check_response }) => {
                self.check_body = check_body;
                self.check_response = check_response;
                if check_response {
                    request.want_identity_response(host);
                }
                if check_body {
                    Step::NeedBody { max_bytes: policy.config.max_body_bytes }
                } else {
                    Step::Continue
                }
            }
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, request: &mut RequestState, body: &[u8]) -> Step {
        let Some(rule) = self.rule() else { return Step::Continue };
        if !self.check_body {
            return Step::Continue;
        }
        let principal = principal(host, request);
        match check_body(rule, principal.as_deref(), request.document(body, meshward_core::json::MAX_DEPTH)) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, _request: &mut RequestState) -> Step {
        if !self.check_response {
            return Step::Continue;
        }
        // Only successful answers carry the object; errors pass as they are.
        let status: u16 = host.response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if !(200..300).contains(&status) {
            self.check_response = false;
            return Step::Continue;
        }
        Step::NeedBody { max_bytes: self.policy.config.max_response_bytes }
    }

    fn on_response_body(&mut self, host: &mut dyn Host, request: &mut RequestState, body: &[u8]) -> Step {
        let Some(rule) = self.rule() else { return Step::Continue };
        if !self.check_response {
            return Step::Continue;
        }
        // Answers are JSON (a form is not an answer format): the strict reader, once.
        let document = meshward_core::json::read(body, meshward_core::json::MAX_DEPTH).map(|d| d.value);
        match check_response(rule, principal(host, request).as_deref(), document.as_ref().map_err(|_| Unreadable::Invalid)) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }
}
