//! Why a request on an idempotent operation was refused. Each variant is one deny reason users see.

use meshward_core::{Denial, DenialKind};

/// What a refused client is told to wait when the fleet engine is down.
const RETRY_AFTER_ENGINE_SECS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyError {
    /// 400: the operation requires an `Idempotency-Key` and the request has none.
    KeyMissing,
    /// 400: the key is empty, too long, not visible ASCII, or sent twice.
    KeyInvalid,
    /// 401: a key is scoped to its caller, and this request has no authenticated principal.
    PrincipalRequired,
    /// 422: the key was used for a different request (method, path or body).
    KeyReused,
    /// 409: the first request with this key is still being handled; retry after it.
    InFlight { retry_after_secs: u64 },
    /// 503: the fleet engine did not answer (`failure_mode: deny`).
    ServiceUnavailable,
    /// 503: the stored answer cannot be read; the request is not run a second time.
    StoredAnswerUnreadable,
}

meshward_core::deny_reasons!(IdempotencyError, self {
    IdempotencyError::KeyMissing => "idempotency_key_missing",
    IdempotencyError::KeyInvalid => "idempotency_key_invalid",
    IdempotencyError::PrincipalRequired => "principal_required",
    IdempotencyError::KeyReused => "idempotency_key_reused",
    IdempotencyError::InFlight { .. } => "idempotency_key_in_flight",
    IdempotencyError::ServiceUnavailable => "idempotency_service_unavailable",
    IdempotencyError::StoredAnswerUnreadable => "stored_answer_unreadable",
});

impl IdempotencyError {
    pub fn message(self) -> &'static str {
        match self {
            IdempotencyError::KeyMissing => "this operation requires an Idempotency-Key header",
            IdempotencyError::KeyInvalid => "the Idempotency-Key must be one header of 1 to 255 visible ASCII characters",
            IdempotencyError::PrincipalRequired => "an idempotency key belongs to an authenticated caller; authenticate first",
            IdempotencyError::KeyReused => "this Idempotency-Key was used for a different request",
            IdempotencyError::InFlight { .. } => "a request with this Idempotency-Key is being handled; retry once it is answered",
            IdempotencyError::ServiceUnavailable => "the idempotency key could not be checked across the fleet; retry later",
            IdempotencyError::StoredAnswerUnreadable => "the stored answer for this Idempotency-Key cannot be read",
        }
    }

    pub fn denial(self) -> Denial {
        let kind = match self {
            IdempotencyError::KeyMissing | IdempotencyError::KeyInvalid => DenialKind::BadRequest,
            IdempotencyError::PrincipalRequired => DenialKind::MissingCredentials,
            IdempotencyError::KeyReused => DenialKind::UnprocessableContent,
            IdempotencyError::InFlight { retry_after_secs } => DenialKind::Conflict { retry_after_secs },
            IdempotencyError::ServiceUnavailable => DenialKind::RetryLater { retry_after_secs: RETRY_AFTER_ENGINE_SECS },
            IdempotencyError::StoredAnswerUnreadable => DenialKind::Unavailable,
        };
        Denial::new(kind, self.reason(), self.message())
    }
}
