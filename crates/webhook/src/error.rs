//! Why a delivery was refused. Each variant is one deny reason users see.

use meshward_core::{Denial, DenialKind};

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
    /// Every replay slot for this delivery's bucket holds a live delivery id.
    ReplayCacheFull,
    /// Shared data could not be updated (contention or proxy error).
    ReplayCheckFailed,
    /// The path matches no configured endpoint and unmatched requests are denied.
    RouteNotCovered,
}

impl WebhookError {
    pub fn reason(self) -> &'static str {
        match self {
            WebhookError::MissingSignature => "missing_signature",
            WebhookError::MissingDeliveryId => "missing_delivery_id",
            WebhookError::BadSignature => "bad_signature",
            WebhookError::TimestampOutOfWindow => "timestamp_out_of_window",
            WebhookError::Replayed => "replayed",
            WebhookError::ReplayCacheFull => "replay_cache_full",
            WebhookError::ReplayCheckFailed => "replay_check_failed",
            WebhookError::RouteNotCovered => "route_not_covered",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            WebhookError::MissingSignature => "the webhook signature headers are missing",
            WebhookError::MissingDeliveryId => "the webhook delivery id header is missing",
            WebhookError::BadSignature => "the webhook signature is invalid",
            WebhookError::TimestampOutOfWindow => "the webhook timestamp is outside the accepted window",
            WebhookError::Replayed => "this webhook delivery was already received",
            WebhookError::ReplayCacheFull => "too many recent deliveries to check for replays; retry later",
            WebhookError::ReplayCheckFailed => "the delivery could not be checked for replays; retry later",
            WebhookError::RouteNotCovered => "no webhook endpoint is configured for this route",
        }
    }

    pub fn denial(self) -> Denial {
        let kind = match self {
            WebhookError::RouteNotCovered => DenialKind::Forbidden { challenge: false },
            WebhookError::ReplayCacheFull | WebhookError::ReplayCheckFailed => DenialKind::Unavailable,
            _ => DenialKind::Unauthorized,
        };
        Denial::new(kind, self.reason(), self.message())
    }
}
