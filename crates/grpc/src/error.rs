//! Why a gRPC call was refused. Each variant is one deny reason users see (as `meshward-reason`
//! metadata beside the gRPC status its [`DenialKind`] maps to).

use meshward_core::caller::Unmet;
use meshward_core::{Denial, DenialKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcError {
    /// The request is not a gRPC call (`content-type` is not `application/grpc[+...]`).
    NotGrpc,
    /// A gRPC call by a method other than POST (gRPC is POST only).
    NotPost,
    /// The method is not in the allowlist (UNIMPLEMENTED).
    MethodNotAllowed,
    /// The method names calling workloads and the peer presented no certificate naming one.
    MissingWorkload,
    /// The calling workload is not one the method allows.
    WorkloadNotAllowed,
    /// The method needs a verified user and there is none.
    MissingPrincipal,
    /// A scope the method requires is not granted.
    MissingScope,
    /// The body is not a sequence of gRPC length-prefixed messages, or a unary request does not
    /// carry exactly one.
    MalformedFrame,
    /// A message is larger than `max_message_bytes` (decoded, when compressed).
    MessageTooLarge { max_bytes: usize },
    /// A compressed message in an encoding other than gzip / deflate, or flagged compressed
    /// without `grpc-encoding`.
    UnsupportedCompression,
    /// The message does not decode as the method's input type.
    InvalidMessage,
    /// The message carries a field its type does not declare (a newer client, or a probe).
    UnknownField { path: String },
    /// An enum field holds a number its enum does not declare.
    InvalidEnum { path: String },
    /// A field breaks one of the service's protovalidate rules (`string.min_len`, `required`).
    RuleViolation { path: String, rule: String },
    /// A field the method compares with the principal's tenant claim holds another value.
    TenantBoundary,
    /// A field the method compares with one of the principal's claims holds another value.
    NotOwner,
}

impl From<Unmet> for GrpcError {
    fn from(unmet: Unmet) -> Self {
        match unmet {
            Unmet::MissingWorkload => GrpcError::MissingWorkload,
            Unmet::WorkloadNotAllowed => GrpcError::WorkloadNotAllowed,
            Unmet::MissingPrincipal => GrpcError::MissingPrincipal,
            Unmet::MissingScope => GrpcError::MissingScope,
        }
    }
}

meshward_core::deny_reasons!(GrpcError, &self {
    GrpcError::NotGrpc => "not_grpc",
    GrpcError::NotPost => "not_post",
    GrpcError::MethodNotAllowed => "method_not_allowed",
    GrpcError::MissingWorkload => "missing_workload",
    GrpcError::WorkloadNotAllowed => "workload_not_allowed",
    GrpcError::MissingPrincipal => "missing_principal",
    GrpcError::MissingScope => "missing_scope",
    GrpcError::MalformedFrame => "malformed_frame",
    GrpcError::MessageTooLarge { .. } => "message_too_large",
    GrpcError::UnsupportedCompression => "unsupported_compression",
    GrpcError::InvalidMessage => "invalid_message",
    GrpcError::UnknownField { .. } => "unknown_field",
    GrpcError::InvalidEnum { .. } => "invalid_enum",
    GrpcError::RuleViolation { .. } => "rule_violation",
    GrpcError::TenantBoundary => "tenant_boundary",
    GrpcError::NotOwner => "not_owner",
});

impl GrpcError {
    fn message(&self) -> String {
        match self {
            GrpcError::NotGrpc => "this service takes gRPC calls only".into(),
            GrpcError::NotPost => "gRPC calls are made with POST".into(),
            GrpcError::MethodNotAllowed => "this method is not offered".into(),
            GrpcError::MissingWorkload => "the calling workload is not identified by a client certificate".into(),
            GrpcError::WorkloadNotAllowed => "the calling workload may not call this method".into(),
            GrpcError::MissingPrincipal => "authentication is required".into(),
            GrpcError::MissingScope => "a required scope is missing".into(),
            GrpcError::MalformedFrame => "the request is not one well-framed gRPC message".into(),
            GrpcError::MessageTooLarge { max_bytes } => format!("a message is larger than {max_bytes} bytes"),
            GrpcError::UnsupportedCompression => "the message compression is not supported (gzip, deflate or identity)".into(),
            GrpcError::InvalidMessage => "the message does not decode as the method's request type".into(),
            GrpcError::UnknownField { path } => format!("the message carries a field its type does not declare ({path})"),
            GrpcError::InvalidEnum { path } => format!("an enum field holds an undeclared value ({path})"),
            GrpcError::RuleViolation { path, rule } => format!("{path} breaks the rule {rule}"),
            GrpcError::TenantBoundary => "the object belongs to another tenant".into(),
            GrpcError::NotOwner => "the object belongs to someone else".into(),
        }
    }

    pub fn denial(&self) -> Denial {
        let kind = match self {
            GrpcError::NotGrpc | GrpcError::UnsupportedCompression => DenialKind::UnsupportedMediaType,
            GrpcError::MethodNotAllowed | GrpcError::NotPost => DenialKind::MethodNotAllowed,
            GrpcError::MissingPrincipal => DenialKind::MissingCredentials,
            GrpcError::MessageTooLarge { .. } => DenialKind::PayloadTooLarge,
            GrpcError::MalformedFrame
            | GrpcError::InvalidMessage
            | GrpcError::UnknownField { .. }
            | GrpcError::InvalidEnum { .. }
            | GrpcError::RuleViolation { .. } => {
                DenialKind::BadRequest
            }
            GrpcError::MissingWorkload
            | GrpcError::WorkloadNotAllowed
            | GrpcError::MissingScope
            | GrpcError::TenantBoundary
            | GrpcError::NotOwner => DenialKind::Forbidden { challenge: false },
        };
        Denial::new(kind, self.reason(), self.message())
    }
}
