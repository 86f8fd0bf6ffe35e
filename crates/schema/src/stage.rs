//! The schema policy as a [`Policy`] / [`Stage`].

use std::rc::Rc;

use meshward_core::{config::ConfigError, Denial, DenialKind, Mode, Policy, RequestState, Stage, Step};
use meshward_core::request::Framing;
use meshward_core::stats::{count, Counter};
use meshward_core::principal::current_principal;
use meshward_host::{Host, LogLevel};

use crate::config::{BodyFormat, SchemaConfig};
use crate::drift::{route_label, unknown_route_label};
use crate::validate::{check_answer, check_body, check_content_type, check_form, check_parameters, declared_response, match_operation, match_response};

#[derive(Debug)]
pub struct SchemaPolicy {
    pub config: SchemaConfig,
}

impl Policy for SchemaPolicy {
    const NAME: &'static str = "schema";
    type Stage = SchemaStage;

    fn configure(config: &[u8], _host: &dyn Host) -> Result<Self, ConfigError> {
        SchemaConfig::parse(config).map(|config| SchemaPolicy { config })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn new_stage(policy: &Rc<Self>) -> SchemaStage {
        SchemaStage { policy: Rc::clone(policy), pending: None, operation: None, answer: None }
    }
}

/// One request's walk: operation, parameters and content type, then the body.
#[derive(Debug)]
pub struct SchemaStage {
    policy: Rc<SchemaPolicy>,
    /// (operation index, media index) whose JSON schema the body must match; no media index
    /// while the framing left open whether there is a body at all.
    pending: Option<(usize, Option<usize>)>,
    /// The matched operation's index, for the response checks.
    operation: Option<usize>,
    /// (response index, media index) of the declared answer whose body is being checked.
    answer: Option<(usize, usize)>,
}

impl Stage for SchemaStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        let config = &policy.config;
        let (op, captures) = match match_operation(config, request.route_method(), &request.canonical) {
            Ok(found) => found,
            Err(e) => {
                // Counted under the route's shape: what `meshward drift` reports.
                request.route = Some(unknown_route_label(host, request.route_method(), &request.canonical));
                return Step::Deny(e.denial());
            }
        };
        request.route = Some(route_label(&op.id));
        self.operation = config.operations.iter().position(|o| std::ptr::eq(o, op));
        if config.response.is_some() {
            request.want_identity_response(host);
        }
        let seen: &RequestState = request;
        let header = |name: &str| seen.header_values(name).map(str::to_string).collect::<Vec<_>>();
        if let Err(e) = check_parameters(op, &captures, &request.path, &header) {
            return Step::Deny(e.denial());
        }
        let content_type = request.header("content-type");
        let has_body = match request.framing() {
            Framing::None => false,
            Framing::Some => true,
            Framing::Unknown => match check_content_type(op, true, content_type) {
                // A body nobody validates streams on, as with a known length.
                Ok(Some(media)) if media.validator.is_none() => return Step::Continue,
                // Whether it is empty decides: read it, then check as with a known length.
                _ => {
                    self.pending = self.operation.map(|op| (op, None));
                    return Step::NeedBody { max_bytes: config.max_body_bytes };
                }
            },
        };
        match check_content_type(op, has_body, content_type) {
            Err(e) => Step::Deny(e.denial()),
            Ok(Some(media)) if media.validator.is_some() => {
                let media_index = op.media.iter().position(|m| std::ptr::eq(m, media));
                self.pending = self.operation.map(|op| (op, media_index));
                Step::NeedBody { max_bytes: config.max_body_bytes }
            }
            Ok(Some(media)) if media.format == (BodyFormat::Unreadable { allowed: true }) => {
                // The operator let this media type through unchecked: counted and logged.
                count(host, Counter::SchemaUncheckedBody);
                let line = serde_json::json!({"filter": "meshward_schema", "decision": "unchecked_body", "route": request.route,
                    "media_type": media.media_type, "request_id": request.request_id});
                host.log(LogLevel::Info, &format!("meshward_schema: {line}"));
                Step::Continue
            }
            Ok(_) => Step::Continue,
        }
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, _request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        let Some(checks) = &policy.config.response else { return Step::Continue };
        let Some(op) = self.operation.and_then(|i| policy.config.operations.get(i)) else { return Step::Continue };
        // Errors pass as they are: only successful answers carry the operation's data.
        let status: u16 = host.response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if !(200..300).contains(&status) {
            return Step::Continue;
        }
        let content_type = host.response_header("content-type");
        let has_body = host.response_header("content-length").is_none_or(|n| n.trim() != "0");
        let media = match match_response(op, status, content_type.as_deref()) {
            Ok(media) => media,
            // A bodiless answer needs no media type where its status declares none (204).
            Err(_) if !has_body && declared_response(op, status).is_some_and(|r| r.media.is_empty()) => return Step::Continue,
            Err(e) if checks.validate => return Step::Deny(e.denial()),
            Err(_) => return Step::Continue,
        };
        if media.validator.is_none() && !media.may_tag {
            return Step::Continue;
        }
        self.answer = op.responses.iter().enumerate().find_map(|(r, resp)| {
            resp.media.iter().position(|m| std::ptr::eq(m, media)).map(|m| (r, m))
        });
        if media.may_tag && policy.config.mode == Mode::Enforce {
            // The answer may shrink; its length is only known once it is cut.
            host.set_response_header("content-length", None);
        }
        Step::NeedBody { max_bytes: checks.max_body_bytes }
    }

    fn on_response_body(&mut self, host: &mut dyn Host, request: &mut RequestState, body: &[u8]) -> Step {
        let policy = Rc::clone(&self.policy);
        let Some(checks) = &policy.config.response else { return Step::Continue };
        let Some((r, m)) = self.answer.take() else { return Step::Continue };
        let Some(media) = self.operation.and_then(|i| policy.config.operations.get(i)).and_then(|op| op.responses.get(r)).and_then(|resp| resp.media.get(m))
        else {
            // The answer was held for a check that cannot be found: it does not go out unchecked.
            return Step::Deny(Denial::new(DenialKind::BadGateway, "stage_error", "the answer's declared schema was not found"));
        };
        // The caller's scopes decide `x-required-scope` fields; no verified caller holds none.
        let principal = current_principal(host, &mut request.principal);
        let scopes = principal.as_ref().map_or(&[][..], |p| p.scopes.as_slice());
        match check_answer(checks, media, body, scopes) {
            Ok(None) => Step::Continue,
            // Shadow mode changes nothing; it counts what it would have cut.
            Ok(Some(_)) if policy.config.mode == Mode::Shadow => {
                count(host, Counter::SchemaShadowStripped);
                Step::Continue
            }
            Ok(Some(cut)) => match host.set_response_body(body.len(), &cut) {
                Ok(()) => {
                    count(host, Counter::SchemaStripped);
                    Step::Continue
                }
                // The fields could not be removed: the answer does not go out with them.
                Err(_) => Step::Deny(Denial::new(DenialKind::BadGateway, "blocked_field", "the answer could not be rewritten")),
            },
            Err(e) => Step::Deny(e.denial()),
        }
    }

    fn on_request_body(&mut self, _host: &mut dyn Host, request: &mut RequestState, body: &[u8]) -> Step {
        let policy = Rc::clone(&self.policy);
        let config = &policy.config;
        let Some((op, media)) = self.pending.take() else { return Step::Continue };
        // The body was held for a check that cannot be found: it does not go on unchecked.
        let lost = || Step::Deny(Denial::new(DenialKind::Unavailable, "stage_error", "the operation's body check was not found"));
        let Some(op) = config.operations.get(op) else { return lost() };
        let media = match media {
            Some(m) => match op.media.get(m) {
                Some(media) => Some(media),
                None => return lost(),
            },
            // Framing did not tell: the body read does (empty is no body).
            None => match check_content_type(op, !body.is_empty(), request.header("content-type")) {
                Ok(media) => media,
                Err(e) => return Step::Deny(e.denial()),
            },
        };
        let Some(media) = media.filter(|m| m.validator.is_some()) else { return Step::Continue };
        let checked = match media.format {
            BodyFormat::Json => check_body(media, request.json(body, config.max_depth)),
            _ => check_form(media, request.header("content-type"), body),
        };
        match checked {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }
}
