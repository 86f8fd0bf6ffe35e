//! Why a request was refused, and the response that tells the client.

use serde_json::json;

/// The realm advertised in `WWW-Authenticate` challenges.
pub const REALM: &str = "meshward";

/// The class of a denial; it fixes the HTTP status and the challenge headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialKind {
    /// 401 without an `error` attribute: no credentials were presented (RFC 6750 §3.1).
    MissingCredentials,
    /// 401 `error="invalid_token"`: credentials were presented and are not acceptable.
    InvalidCredentials,
    /// 401 without a challenge: a credential that is not a bearer token (a webhook signature)
    /// is missing or wrong.
    Unauthorized,
    /// 403: authenticated, but not allowed here (`error="invalid_token"` for a wrong audience).
    Forbidden { challenge: bool },
    /// 404: the object is hidden from this caller (IDOR answers that do not confirm existence),
    /// or the route does not exist in the contract.
    NotFound,
    /// 405: the path exists, not with this method.
    MethodNotAllowed,
    /// 415: the body's content type is not one the operation accepts.
    UnsupportedMediaType,
    /// 400: the request itself is not acceptable (contract violations, bad paths).
    BadRequest,
    /// 413: the body exceeds the configured limit.
    PayloadTooLarge,
    /// 408: the body a check must read did not arrive in time (a slow sender is answered, not
    /// held).
    RequestTimeout,
    /// 422: the request cannot be processed as sent (an idempotency key reused for another
    /// request).
    UnprocessableContent,
    /// 429 with `Retry-After`.
    RateLimited { retry_after_secs: u64 },
    /// 409 with `Retry-After`: the same request is being handled right now; retry after it.
    Conflict { retry_after_secs: u64 },
    /// 503: the filter cannot decide (no valid configuration); never an allow.
    Unavailable,
    /// 503 with `Retry-After`: a dependency the decision needs is down; retrying later is safe.
    RetryLater { retry_after_secs: u64 },
    /// 502: the upstream's answer breaks the contract and is not passed on.
    BadGateway,
}

/// The gRPC status codes a denial maps to (numbered as gRPC numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Aborted = 10,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// A refusal: the machine-readable reason users see, and a short human message.
/// Never carries secrets or token contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenialKind,
    /// Stable, snake_case, one per cause (`expired`, `wrong_audience`); used in bodies and metrics.
    pub reason: &'static str,
    pub message: String,
    /// Extra machine-readable fields for the body (`location`, `keyword`); never request values.
    pub detail: Vec<(&'static str, String)>,
}

impl Denial {
    pub fn new(kind: DenialKind, reason: &'static str, message: impl Into<String>) -> Self {
        Denial {
            kind,
            reason,
            message: message.into(),
            detail: Vec::new(),
        }
    }

    /// Adds a field to the body.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.detail.push((key, value.into()));
        self
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> u16 {
        match self.kind {
            DenialKind::MissingCredentials | DenialKind::InvalidCredentials | DenialKind::Unauthorized => 401,
            DenialKind::Forbidden { .. } => 403,
            DenialKind::BadRequest => 400,
            DenialKind::NotFound => 404,
            DenialKind::PayloadTooLarge => 413,
            DenialKind::RequestTimeout => 408,
            DenialKind::UnprocessableContent => 422,
            DenialKind::RateLimited { .. } => 429,
            DenialKind::Conflict { .. } => 409,
            DenialKind::RetryLater { .. } => 503,
            DenialKind::MethodNotAllowed => 405,
            DenialKind::UnsupportedMediaType => 415,
            DenialKind::Unavailable => 503,
            DenialKind::BadGateway => 502,
        }
    }

    /// The gRPC status a gRPC caller gets instead of the HTTP status (its codes carry the
    /// meaning: a refused argument is `INVALID_ARGUMENT`, not the `INTERNAL` Envoy would map a
    /// 400 to; a spent budget `RESOURCE_EXHAUSTED`).
    pub fn grpc_status(&self) -> GrpcCode {
        match self.kind {
            DenialKind::MissingCredentials | DenialKind::InvalidCredentials | DenialKind::Unauthorized => GrpcCode::Unauthenticated,
            DenialKind::Forbidden { .. } => GrpcCode::PermissionDenied,
            DenialKind::BadRequest | DenialKind::UnsupportedMediaType | DenialKind::UnprocessableContent => GrpcCode::InvalidArgument,
            DenialKind::NotFound => GrpcCode::NotFound,
            DenialKind::MethodNotAllowed => GrpcCode::Unimplemented,
            DenialKind::PayloadTooLarge | DenialKind::RateLimited { .. } => GrpcCode::ResourceExhausted,
            DenialKind::Conflict { .. } => GrpcCode::Aborted,
            DenialKind::RequestTimeout => GrpcCode::DeadlineExceeded,
            DenialKind::Unavailable | DenialKind::RetryLater { .. } => GrpcCode::Unavailable,
            DenialKind::BadGateway => GrpcCode::Internal,
        }
    }

    /// Response headers besides `content-type`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let invalid_token = || {
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted_string_safe(&self.message)
            )
        };
        match &self.kind {
            DenialKind::MissingCredentials => {
                vec![("www-authenticate", format!("Bearer realm=\"{REALM}\""))]
            }
            DenialKind::InvalidCredentials | DenialKind::Forbidden { challenge: true } => {
                vec![("www-authenticate", invalid_token())]
            }
            DenialKind::RateLimited { retry_after_secs }
            | DenialKind::Conflict { retry_after_secs }
            | DenialKind::RetryLater { retry_after_secs } => {
                vec![("retry-after", retry_after_secs.to_string())]
            }
            DenialKind::Forbidden { challenge: false }
            | DenialKind::Unauthorized
            | DenialKind::BadRequest
            | DenialKind::NotFound
            | DenialKind::MethodNotAllowed
            | DenialKind::UnsupportedMediaType
            | DenialKind::PayloadTooLarge
            | DenialKind::RequestTimeout
            | DenialKind::UnprocessableContent
            | DenialKind::Unavailable
            | DenialKind::BadGateway => vec![],
        }
    }

    /// The JSON body: `{"error", "reason", "request_id"}`.
    pub fn body(&self, request_id: Option<&str>) -> Vec<u8> {
        let mut body = json!({
            "error": self.message,
            "reason": self.reason,
            "request_id": request_id,
        });
        if let Some(map) = body.as_object_mut() {
            for (k, v) in &self.detail {
                map.insert((*k).to_string(), serde_json::Value::String(v.clone()));
            }
        }
        body.to_string().into_bytes()
    }
}

/// Keeps a message inside an HTTP quoted-string: printable ASCII without `"` and `\`.
fn quoted_string_safe(text: &str) -> String {
    text.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

/// A stage error's `reason()` and `REASONS` from one table: each variant's deny reason is
/// written once, the match stays exhaustive, and `meshward test` names the reasons of a stage
/// that no case produced from `REASONS`.
#[macro_export]
macro_rules! deny_reasons {
    ($ty:ident, &$s:ident { $($pat:pat => $reason:literal),+ $(,)? }) => {
        impl $ty {
            /// Every deny reason of this error, in the table's order.
            pub const REASONS: &'static [&'static str] = &[$($reason),+];
            /// Machine-readable reason, stable across releases.
            pub fn reason(&$s) -> &'static str {
                match $s {
                    $($pat => $reason),+
                }
            }
        }
    };
    ($ty:ident, $s:ident { $($pat:pat => $reason:literal),+ $(,)? }) => {
        impl $ty {
            /// Every deny reason of this error, in the table's order.
            pub const REASONS: &'static [&'static str] = &[$($reason),+];
            /// Machine-readable reason, stable across releases.
            pub fn reason($s) -> &'static str {
                match $s {
                    $($pat => $reason),+
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_challenges() {
        let cases = [
            (DenialKind::MissingCredentials, 401, Some("Bearer realm=\"meshward\"")),
            (
                DenialKind::InvalidCredentials,
                401,
                Some("Bearer realm=\"meshward\", error=\"invalid_token\", error_description=\"m x\""),
            ),
            (
                DenialKind::Forbidden { challenge: true },
                403,
                Some("Bearer realm=\"meshward\", error=\"invalid_token\", error_description=\"m x\""),
            ),
            (DenialKind::Forbidden { challenge: false }, 403, None),
            (DenialKind::Unauthorized, 401, None),
            (DenialKind::BadRequest, 400, None),
            (DenialKind::NotFound, 404, None),
            (DenialKind::PayloadTooLarge, 413, None),
            (DenialKind::RequestTimeout, 408, None),
            (DenialKind::UnprocessableContent, 422, None),
            (DenialKind::Unavailable, 503, None),
            (DenialKind::BadGateway, 502, None),
        ];
        for (kind, status, challenge) in cases {
            let d = Denial::new(kind.clone(), "r", "m\"\r\n x");
            assert_eq!(d.status(), status, "{kind:?}");
            let got = d
                .headers()
                .into_iter()
                .find(|(n, _)| *n == "www-authenticate")
                .map(|(_, v)| v);
            assert_eq!(got.as_deref(), challenge, "{kind:?}");
        }
        for (kind, status) in [
            (DenialKind::RateLimited { retry_after_secs: 7 }, 429),
            (DenialKind::Conflict { retry_after_secs: 7 }, 409),
            (DenialKind::RetryLater { retry_after_secs: 7 }, 503),
        ] {
            let d = Denial::new(kind, "r", "m");
            assert_eq!(d.status(), status);
            assert_eq!(d.headers(), vec![("retry-after", "7".to_string())]);
        }
    }

    #[test]
    fn grpc_codes() {
        let cases = [
            (DenialKind::MissingCredentials, GrpcCode::Unauthenticated),
            (DenialKind::Forbidden { challenge: false }, GrpcCode::PermissionDenied),
            (DenialKind::BadRequest, GrpcCode::InvalidArgument),
            (DenialKind::PayloadTooLarge, GrpcCode::ResourceExhausted),
            (DenialKind::RateLimited { retry_after_secs: 1 }, GrpcCode::ResourceExhausted),
            (DenialKind::MethodNotAllowed, GrpcCode::Unimplemented),
            (DenialKind::RequestTimeout, GrpcCode::DeadlineExceeded),
            (DenialKind::Unavailable, GrpcCode::Unavailable),
        ];
        for (kind, code) in cases {
            assert_eq!(Denial::new(kind.clone(), "r", "m").grpc_status(), code, "{kind:?}");
        }
        assert_eq!(GrpcCode::Unauthenticated as u32, 16);
    }

    #[test]
    fn body_is_small_json() {
        let d = Denial::new(DenialKind::InvalidCredentials, "expired", "token expired");
        let v: serde_json::Value = serde_json::from_slice(&d.body(Some("abc"))).unwrap();
        assert_eq!(
            v,
            json!({"error": "token expired", "reason": "expired", "request_id": "abc"})
        );
        let v: serde_json::Value = serde_json::from_slice(&d.body(None)).unwrap();
        assert_eq!(v["request_id"], serde_json::Value::Null);
    }
}
