//! Why a token was refused. Each variant is one deny reason users see.

use meshward_core::{Denial, DenialKind};

/// What a client is told to wait when no key set could be fetched (the first retries of the
/// fetch come within seconds).
const RETRY_AFTER_JWKS_SECS: u64 = 5;

/// A JWT authentication failure. [`JwtError::reason`] is the `reason` in the response body and
/// the metric label; the mapping is 1:1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// No token where the provider looks for one.
    MissingToken,
    /// Not three base64url segments with a JSON header and payload.
    MalformedToken,
    /// Longer than `max_token_bytes`.
    TokenTooLarge,
    /// `alg` is `none` or not one meshward verifies.
    UnsupportedAlgorithm,
    /// The token's `alg` does not fit the selected key (RS256 key used as an HS256 secret).
    AlgorithmMismatch,
    /// The token's `kid` is not in the provider's key set.
    UnknownKid,
    /// The header lists `crit` extensions, none of which meshward understands.
    UnsupportedCritical,
    BadSignature,
    Expired,
    NotYetValid,
    /// No `exp` claim while the provider requires one.
    MissingExpiration,
    WrongIssuer,
    WrongAudience,
    /// The provider's remote key set has never been fetched successfully: not the caller's
    /// fault, so 503 + `Retry-After` (`retry_later`), or 401 where the provider asks for it
    /// (`remote_jwks.unavailable_status: 401`).
    JwksUnavailable { retry_later: bool },
    /// A valid token the policy revoked (by `jti`, or its subject).
    TokenRevoked,
}

meshward_core::deny_reasons!(JwtError, self {
    JwtError::MissingToken => "missing_token",
    JwtError::MalformedToken => "malformed_token",
    JwtError::TokenTooLarge => "token_too_large",
    JwtError::UnsupportedAlgorithm => "unsupported_algorithm",
    JwtError::AlgorithmMismatch => "algorithm_mismatch",
    JwtError::UnknownKid => "unknown_kid",
    JwtError::UnsupportedCritical => "unsupported_crit",
    JwtError::BadSignature => "bad_signature",
    JwtError::Expired => "expired",
    JwtError::NotYetValid => "not_yet_valid",
    JwtError::MissingExpiration => "missing_exp",
    JwtError::WrongIssuer => "wrong_issuer",
    JwtError::WrongAudience => "wrong_audience",
    JwtError::JwksUnavailable { .. } => "jwks_unavailable",
    JwtError::TokenRevoked => "token_revoked",
});

impl JwtError {
    /// Short message for the response body and the `error_description` challenge.
    pub fn message(self) -> &'static str {
        match self {
            JwtError::MissingToken => "a bearer token is required",
            JwtError::MalformedToken => "the token is not a well-formed JWT",
            JwtError::TokenTooLarge => "the token is too large",
            JwtError::UnsupportedAlgorithm => "the token's algorithm is not accepted",
            JwtError::AlgorithmMismatch => "the token's algorithm does not match its key",
            JwtError::UnknownKid => "the token's signing key is not known",
            JwtError::UnsupportedCritical => "the token has unsupported critical header parameters",
            JwtError::BadSignature => "the token's signature is invalid",
            JwtError::Expired => "the token has expired",
            JwtError::NotYetValid => "the token is not valid yet",
            JwtError::MissingExpiration => "the token has no expiration",
            JwtError::WrongIssuer => "the token's issuer is not accepted",
            JwtError::WrongAudience => "the token is not meant for this audience",
            JwtError::JwksUnavailable { .. } => "the signing keys are not available; retry later",
            JwtError::TokenRevoked => "the token has been revoked",
        }
    }

    /// How far verification got before failing. When several providers or alternatives fail,
    /// the deepest failure is the one reported: it says the most about what went wrong.
    pub fn depth(self) -> u8 {
        match self {
            JwtError::MissingToken => 0,
            JwtError::TokenTooLarge | JwtError::MalformedToken => 1,
            JwtError::UnsupportedAlgorithm | JwtError::UnsupportedCritical => 2,
            JwtError::JwksUnavailable { .. } | JwtError::UnknownKid | JwtError::AlgorithmMismatch => 3,
            JwtError::BadSignature => 4,
            JwtError::Expired | JwtError::NotYetValid | JwtError::MissingExpiration => 5,
            JwtError::WrongIssuer => 6,
            JwtError::WrongAudience => 7,
            JwtError::TokenRevoked => 8,
        }
    }

    /// The denial sent to the client: 401 for authentication, 403 for a wrong audience.
    pub fn denial(self) -> Denial {
        let kind = match self {
            JwtError::MissingToken => DenialKind::MissingCredentials,
            JwtError::WrongAudience => DenialKind::Forbidden { challenge: true },
            JwtError::JwksUnavailable { retry_later: true } => DenialKind::RetryLater { retry_after_secs: RETRY_AFTER_JWKS_SECS },
            _ => DenialKind::InvalidCredentials,
        };
        Denial::new(kind, self.reason(), self.message())
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(JwtError::MissingToken.denial().status(), 401);
        assert_eq!(JwtError::Expired.denial().status(), 401);
        assert_eq!(JwtError::WrongIssuer.denial().status(), 401);
        assert_eq!(JwtError::WrongAudience.denial().status(), 403);
        // The identity provider being down is not the caller's fault: 503, retry later.
        let unavailable = JwtError::JwksUnavailable { retry_later: true }.denial();
        assert_eq!((unavailable.status(), unavailable.headers()), (503, vec![("retry-after", "5".to_string())]));
        assert_eq!(JwtError::JwksUnavailable { retry_later: false }.denial().status(), 401);
        assert_eq!(JwtError::TokenRevoked.denial().status(), 401);
    }
}
