//! Why a request was refused. Each variant is one deny reason users see.

use meshward_core::{Denial, DenialKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitError {
    /// A rule's budget for this key is spent; retry after this many seconds.
    RateLimited { retry_after_secs: u64 },
    /// The rate-limit service could not answer and the policy fails closed.
    ServiceUnavailable,
    /// The local state could not be updated (shared data contention or error).
    StateUnavailable,
}

meshward_core::deny_reasons!(RateLimitError, self {
    RateLimitError::RateLimited { .. } => "rate_limited",
    RateLimitError::ServiceUnavailable => "rate_limit_service_unavailable",
    RateLimitError::StateUnavailable => "rate_limit_state_unavailable",
});

impl RateLimitError {
    pub fn denial(self) -> Denial {
        match self {
            RateLimitError::RateLimited { retry_after_secs } => Denial::new(
                DenialKind::RateLimited { retry_after_secs },
                self.reason(),
                "too many requests",
            ),
            RateLimitError::ServiceUnavailable => {
                Denial::new(DenialKind::Unavailable, self.reason(), "the rate-limit service is unavailable")
            }
            RateLimitError::StateUnavailable => {
                Denial::new(DenialKind::Unavailable, self.reason(), "the rate-limit state is unavailable")
            }
        }
    }
}
