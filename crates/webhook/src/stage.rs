//! The webhook policy as a [`Policy`] / [`Stage`].

use std::rc::Rc;

use meshward_core::clock::unix_secs;
use meshward_core::{config::ConfigError, Mode, Policy, RequestState, Stage, Step};
use meshward_host::Host;

use meshward_core::config::Unmatched;

use crate::config::WebhookConfig;
use crate::replay::{check_and_remember, create_buckets};
use crate::verify::{check_headers, verify_signature, Delivery};
use crate::WebhookError;

#[derive(Debug)]
pub struct WebhookPolicy {
    pub config: WebhookConfig,
}

impl Policy for WebhookPolicy {
    const NAME: &'static str = "webhook";
    type Stage = WebhookStage;

    fn configure(config: &[u8], host: &dyn Host) -> Result<Self, ConfigError> {
        WebhookConfig::parse(config, &|name| host.env_var(name)).map(|config| WebhookPolicy { config })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn start(policy: &Rc<Self>, host: &mut dyn Host) {
        for endpoint in &policy.config.endpoints {
            create_buckets(host, endpoint);
        }
    }

    fn new_stage(policy: &Rc<Self>) -> WebhookStage {
        WebhookStage { policy: Rc::clone(policy), pending: None }
    }
}

/// One delivery's walk: headers checked first, then the buffered body.
#[derive(Debug)]
pub struct WebhookStage {
    policy: Rc<WebhookPolicy>,
    /// Endpoint index and what its headers said, while the body is buffered.
    pending: Option<(usize, Delivery)>,
}

impl Stage for WebhookStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let config = &self.policy.config;
        let Some(index) = config.endpoints.iter().position(|e| e.path_match.matches(&request.canonical)) else {
            return match config.unmatched {
                Unmatched::Allow => Step::Continue,
                Unmatched::Deny => Step::Deny(WebhookError::RouteNotCovered.denial()),
            };
        };
        let endpoint = &config.endpoints[index];
        let seen: &RequestState = request;
        match check_headers(endpoint, &|name| seen.header(name).map(str::to_string), unix_secs(host)) {
            Ok(delivery) => {
                self.pending = Some((index, delivery));
                Step::NeedBody { max_bytes: endpoint.max_body_bytes }
            }
            Err(e) => Step::Deny(e.denial()),
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, _request: &mut RequestState, body: &[u8]) -> Step {
        let Some((index, delivery)) = self.pending.take() else {
            return Step::Deny(WebhookError::MissingSignature.denial());
        };
        let Some(endpoint) = self.policy.config.endpoints.get(index) else {
            return Step::Deny(WebhookError::RouteNotCovered.denial());
        };
        if let Err(e) = verify_signature(endpoint, &delivery, body) {
            return Step::Deny(e.denial());
        }
        if endpoint.replay_protection {
            let now = unix_secs(host);
            let Some(id) = &delivery.id else {
                return Step::Deny(WebhookError::MissingDeliveryId.denial());
            };
            // Remember an id as long as a copy could still pass the timestamp check.
            let expires_at = match delivery.timestamp {
                Some(ts) => u64::try_from(ts).unwrap_or(0).saturating_add(endpoint.tolerance_seconds).max(now) + 1,
                None => now.saturating_add(endpoint.replay_ttl_seconds),
            };
            if let Err(e) = check_and_remember(host, endpoint, id, expires_at, now) {
                return Step::Deny(e.denial());
            }
        }
        Step::Continue
    }
}
