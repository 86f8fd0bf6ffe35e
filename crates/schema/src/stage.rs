//! The schema policy as a [`Policy`] / [`Stage`].

use std::rc::Rc;

use meshward_core::route::canonical_path;
use meshward_core::{config::ConfigError, Denial, DenialKind, Mode, Policy, RequestState, Stage, Step};
use meshward_host::Host;

use crate::config::SchemaConfig;
use crate::validate::{check_body, check_content_type, check_parameters, match_operation};

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
        SchemaStage { policy: Rc::clone(policy), pending: None }
    }
}

/// One request's walk: operation, parameters and content type, then the body.
#[derive(Debug)]
pub struct SchemaStage {
    policy: Rc<SchemaPolicy>,
    /// (operation index, media index) whose JSON schema the body must match.
    pending: Option<(usize, usize)>,
}

/// Operation ids as metric labels: letters, digits, `_` and `-` only.
fn label(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

impl Stage for SchemaStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let canonical = match canonical_path(&request.path) {
            Ok(p) => p,
            Err(e) => return Step::Deny(Denial::new(DenialKind::BadRequest, "invalid_path", e.to_string())),
        };
        let policy = Rc::clone(&self.policy);
        let config = &policy.config;
        let (op, captures) = match match_operation(config, &request.method, &canonical) {
            Ok(found) => found,
            Err(e) => return Step::Deny(e.denial()),
        };
        request.route = Some(label(&op.id));
        let headers = host.request_headers();
        let header = |name: &str| headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        if let Err(e) = check_parameters(op, &captures, &request.path, &header) {
            return Step::Deny(e.denial());
        }
        let content_length: Option<u64> = host.request_header("content-length").and_then(|v| v.trim().parse().ok());
        let has_body = content_length.is_some_and(|n| n > 0) || host.request_header("transfer-encoding").is_some();
        let content_type = host.request_header("content-type");
        match check_content_type(op, has_body, content_type.as_deref()) {
            Err(e) => Step::Deny(e.denial()),
            Ok(Some(media)) if media.validator.is_some() => {
                let op_index = config.operations.iter().position(|o| std::ptr::eq(o, op));
                let media_index = op.media.iter().position(|m| std::ptr::eq(m, media));
                self.pending = op_index.zip(media_index);
                Step::NeedBody { max_bytes: config.max_body_bytes }
            }
            Ok(_) => Step::Continue,
        }
    }

    fn on_request_body(&mut self, _host: &mut dyn Host, _request: &mut RequestState, body: &[u8]) -> Step {
        let Some((op, media)) = self.pending.take() else { return Step::Continue };
        let config = &self.policy.config;
        let Some(media) = config.operations.get(op).and_then(|o| o.media.get(media)) else { return Step::Continue };
        match check_body(media, body, config.max_depth) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }
}
