//! Why a request breaks the contract. Each variant is one deny reason users see; locations are
//! JSON pointers or `query.<name>`-style names, never the offending value.

use meshward_core::json::Ambiguity;
use meshward_core::{Denial, DenialKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    UnknownRoute,
    MethodNotAllowed,
    MissingParameter { location: String },
    InvalidParameter { location: String, keyword: String },
    UnsupportedMediaType,
    MissingBody,
    UnexpectedBody,
    TooDeep { max_depth: usize },
    InvalidJson,
    /// JSON that services read differently (see `meshward_core::json`).
    AmbiguousJson { what: Ambiguity },
    /// A form body that does not read as its declared type.
    InvalidForm,
    /// A form body that services read differently (see [`crate::form`]).
    AmbiguousForm,
    /// A declared media type whose schema meshward cannot check, not opted in.
    UncheckedMediaType,
    SchemaViolation { location: String, keyword: String },
    /// The answer's status or content type is not declared for the operation.
    UndeclaredResponse,
    /// The answer does not match its declared schema.
    ResponseViolation { location: String, keyword: String },
    /// The answer carries a field whose tag (`writeOnly`, an `x-data-class`) is set to block.
    BlockedField { location: String, tag: String },
}

meshward_core::deny_reasons!(SchemaError, &self {
    SchemaError::UnknownRoute => "unknown_route",
    SchemaError::MethodNotAllowed => "method_not_allowed",
    SchemaError::MissingParameter { .. } => "missing_parameter",
    SchemaError::InvalidParameter { .. } => "invalid_parameter",
    SchemaError::UnsupportedMediaType => "unsupported_media_type",
    SchemaError::MissingBody => "missing_body",
    SchemaError::UnexpectedBody => "unexpected_body",
    SchemaError::TooDeep { .. } => "too_deep",
    SchemaError::InvalidJson => "invalid_json",
    SchemaError::AmbiguousJson { .. } => "ambiguous_json",
    SchemaError::InvalidForm => "invalid_form",
    SchemaError::AmbiguousForm => "ambiguous_form",
    SchemaError::UncheckedMediaType => "unchecked_media_type",
    SchemaError::SchemaViolation { .. } => "schema_violation",
    SchemaError::UndeclaredResponse => "undeclared_response",
    SchemaError::ResponseViolation { .. } => "response_violation",
    SchemaError::BlockedField { .. } => "blocked_field",
});

impl SchemaError {
    pub fn denial(&self) -> Denial {
        let bad = DenialKind::BadRequest;
        match self {
            SchemaError::UnknownRoute => Denial::new(DenialKind::NotFound, self.reason(), "no such operation in the API contract"),
            SchemaError::MethodNotAllowed => Denial::new(DenialKind::MethodNotAllowed, self.reason(), "the API contract has no such method for this path"),
            SchemaError::MissingParameter { location } => {
                Denial::new(bad, self.reason(), "a required parameter is missing").with("location", location.clone())
            }
            SchemaError::InvalidParameter { location, keyword } => Denial::new(bad, self.reason(), "a parameter does not match the contract")
                .with("location", location.clone())
                .with("keyword", keyword.clone()),
            SchemaError::UnsupportedMediaType => {
                Denial::new(DenialKind::UnsupportedMediaType, self.reason(), "the body's content type is not accepted here")
            }
            SchemaError::MissingBody => Denial::new(bad, self.reason(), "a request body is required"),
            SchemaError::UnexpectedBody => Denial::new(bad, self.reason(), "this operation takes no request body"),
            SchemaError::TooDeep { max_depth } => {
                Denial::new(bad, self.reason(), format!("the body nests deeper than {max_depth} levels"))
            }
            SchemaError::InvalidJson => Denial::new(bad, self.reason(), "the body is not valid JSON"),
            SchemaError::AmbiguousJson { what } => Denial::new(bad, self.reason(), what.describe()),
            SchemaError::InvalidForm => Denial::new(bad, self.reason(), "the body is not a form of its content type"),
            SchemaError::AmbiguousForm => Denial::new(bad, self.reason(), "the form repeats a field or has fields that differ only in case"),
            SchemaError::UncheckedMediaType => Denial::new(
                DenialKind::UnsupportedMediaType,
                self.reason(),
                "bodies of this content type cannot be checked against the contract here",
            ),
            SchemaError::SchemaViolation { location, keyword } => Denial::new(bad, self.reason(), "the body does not match the contract")
                .with("location", location.clone())
                .with("keyword", keyword.clone()),
            SchemaError::UndeclaredResponse => {
                Denial::new(DenialKind::BadGateway, self.reason(), "the upstream answered with a status or content type the contract does not declare")
            }
            SchemaError::ResponseViolation { location, keyword } => {
                Denial::new(DenialKind::BadGateway, self.reason(), "the upstream's answer does not match the contract")
                    .with("location", location.clone())
                    .with("keyword", keyword.clone())
            }
            SchemaError::BlockedField { location, tag } => {
                Denial::new(DenialKind::BadGateway, self.reason(), "the upstream's answer carries a field that may not leave the service")
                    .with("location", location.clone())
                    .with("tag", tag.clone())
            }
        }
    }
}
