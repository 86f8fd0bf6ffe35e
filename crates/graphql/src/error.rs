//! Why a GraphQL request was refused. Each variant is one deny reason users see.

use meshward_core::{Denial, DenialKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphqlError {
    /// Not a GraphQL request this endpoint reads: a POST of JSON (one operation, or a batch as
    /// an array), or a GET with a `query` / `extensions` parameter.
    NotGraphql,
    /// The request body or parameters are not a JSON operation (or JSON services read differently).
    InvalidRequest,
    /// More operations in one batch than allowed.
    BatchTooLarge { max: usize },
    /// A document sent as text that is not in the allowlist, and raw documents are not allowed.
    NotPersisted,
    /// A persisted-query hash (or id) not in the allowlist.
    UnknownPersistedQuery,
    /// The document sent does not hash to the hash sent with it.
    HashMismatch,
    /// The document does not parse, or names no single operation to run.
    InvalidDocument,
    /// Selections nest deeper than allowed.
    TooDeep { max: usize },
    /// More aliases than allowed (one query asking the same field many times).
    TooManyAliases { max: usize },
    /// `__schema` / `__type` and introspection is off.
    Introspection,
    /// Fragments expand to more selections than the filter walks.
    TooComplex,
    /// A mutation or subscription sent as a GET (405).
    MutationOverGet,
}

impl GraphqlError {
    pub fn reason(&self) -> &'static str {
        match self {
            GraphqlError::NotGraphql => "not_graphql",
            GraphqlError::InvalidRequest => "invalid_request",
            GraphqlError::BatchTooLarge { .. } => "batch_too_large",
            GraphqlError::NotPersisted => "not_persisted",
            GraphqlError::UnknownPersistedQuery => "unknown_persisted_query",
            GraphqlError::HashMismatch => "hash_mismatch",
            GraphqlError::InvalidDocument => "invalid_document",
            GraphqlError::TooDeep { .. } => "too_deep",
            GraphqlError::TooManyAliases { .. } => "too_many_aliases",
            GraphqlError::Introspection => "introspection_disabled",
            GraphqlError::TooComplex => "too_complex",
            GraphqlError::MutationOverGet => "mutation_over_get",
        }
    }

    fn message(&self) -> String {
        match self {
            GraphqlError::NotGraphql => "not a GraphQL request (POST JSON, or GET with query parameters)".into(),
            GraphqlError::InvalidRequest => "the GraphQL request is not a JSON operation".into(),
            GraphqlError::BatchTooLarge { max } => format!("a batch holds at most {max} operations"),
            GraphqlError::NotPersisted => "only persisted operations are accepted".into(),
            GraphqlError::UnknownPersistedQuery => "the persisted operation is not known".into(),
            GraphqlError::HashMismatch => "the document does not match its hash".into(),
            GraphqlError::InvalidDocument => "the document does not parse or names no single operation".into(),
            GraphqlError::TooDeep { max } => format!("selections nest deeper than {max}"),
            GraphqlError::TooManyAliases { max } => format!("more than {max} aliases"),
            GraphqlError::Introspection => "introspection is disabled".into(),
            GraphqlError::TooComplex => "the document expands to too many selections".into(),
            GraphqlError::MutationOverGet => "only queries run over GET; send mutations as POST".into(),
        }
    }

    pub fn denial(&self) -> Denial {
        let kind = match self {
            GraphqlError::NotGraphql => DenialKind::UnsupportedMediaType,
            GraphqlError::MutationOverGet => DenialKind::MethodNotAllowed,
            GraphqlError::NotPersisted | GraphqlError::UnknownPersistedQuery | GraphqlError::Introspection => {
                DenialKind::Forbidden { challenge: false }
            }
            GraphqlError::InvalidRequest
            | GraphqlError::BatchTooLarge { .. }
            | GraphqlError::HashMismatch
            | GraphqlError::InvalidDocument
            | GraphqlError::TooDeep { .. }
            | GraphqlError::TooManyAliases { .. }
            | GraphqlError::TooComplex => DenialKind::BadRequest,
        };
        Denial::new(kind, self.reason(), self.message())
    }
}
