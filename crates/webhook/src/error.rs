//! Why a delivery was refused. Each variant is one deny reason users see.

use meshward_core::{Denial, DenialKind};

/// What a refused sender is told to wait when the fleet engine is down.
const RETRY_AFTER_ENGINE_SECS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookError {
    /// The scheme's signature header (or, for Standard Webhooks, id / timestamp) is absent.
    MissingSignature,
    /// The delivery id header needed for replay protection is absent (GitHub, generic HMAC).
    MissingDeliveryId,
    /// No signature verifies with any configured secret, or the header cannot be parsed.
    BadSignature,
    /// The timestamp is unparsable or outside the tolerance, past or future.
    TimestampOutOfWindow,
    /// This delivery was already accepted within the replay window.
    Replayed,
    /// The same delivery is being handled right now (a concurrent duplicate): 409, retry later.
    InFlight { retry_after_secs: u64 },
    /// The fleet engine holding the shared seen-set did not answer (`failure_mode: deny`).
    ReplayServiceUnavailable,
    /// Every replay slot for this delivery's bucket holds a live delivery id.
    ReplayCacheFull,
    /// Shared data could not be updated (contention or proxy error).
    ReplayCheckFailed,
    /// The path matches no configured endpoint and unmatched requests are denied.
    RouteNotCovered,
}

meshward_core::deny_reasons!(WebhookError, self {
    WebhookError::MissingSignature => "missing_signature",
    WebhookError::MissingDeliveryId => "missing_delivery_id",
    WebhookError::BadSignature => "bad_signature",
    WebhookError::TimestampOutOfWindow => "timestamp_out_of_window",
    WebhookError::Replayed => "replayed",
    WebhookError::InFlight { .. } => "in_flight",
    WebhookError::ReplayServiceUnavailable => "replay_service_unavailable",
    WebhookError::ReplayCacheFull => "replay_cache_full",
    WebhookError::ReplayCheckFailed => "replay_check_failed",
    WebhookError::RouteNotCovered => "route_not_covered",
});

impl WebhookError {
    pub fn message(self) -> &'static str {
        match self {
            WebhookError::MissingSignature => "the webhook signature headers are missing",
            WebhookError::MissingDeliveryId => "the webhook delivery id header is missing",
            WebhookError::BadSignature => "the webhook signature is invalid",
            WebhookError::TimestampOutOfWindow => "the webhook timestamp is outside the accepted window",
            WebhookError::Replayed => "this webhook delivery was already received",
            WebhookError::InFlight { .. } => "this webhook delivery is being handled; retry once it is answered",
            WebhookError::ReplayServiceUnavailable => "the delivery could not be checked for replays across the fleet; retry later",
            WebhookError::ReplayCacheFull => "too many recent deliveries to check for replays; retry later",
            WebhookError::ReplayCheckFailed => "the delivery could not be checked for replays; retry later",
            WebhookError::RouteNotCovered => "no webhook endpoint is configured for this route",
        }
    }

    pub fn denial(self) -> Denial {
        let kind = match self {
            WebhookError::RouteNotCovered => DenialKind::Forbidden { challenge: false },
            WebhookError::ReplayCacheFull | WebhookError::ReplayCheckFailed => DenialKind::Unavailable,
            WebhookError::InFlight { retry_after_secs } => DenialKind::Conflict { retry_after_secs },
            WebhookError::ReplayServiceUnavailable => DenialKind::RetryLater { retry_after_secs: RETRY_AFTER_ENGINE_SECS },
            _ => DenialKind::Unauthorized,
        };
        Denial::new(kind, self.reason(), self.message())
    }
}
