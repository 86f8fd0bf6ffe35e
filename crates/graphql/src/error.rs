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
    /// More directives at one location than allowed.
    TooManyDirectives { max: usize },
    /// `__schema` / `__type` and introspection is off.
    Introspection,
    /// Fragments expand to more selections than the filter walks.
    TooComplex,
    /// A mutation or subscription sent as a GET (405).
    MutationOverGet,
    /// A field (or a fragment's type) the schema does not declare.
    UnknownField { coordinate: String },
    /// The operations cost more than allowed (the schema's weights, lists by their size).
    TooCostly { cost: u64, max: u64 },
    /// A selected field needs scopes and no user was verified (401).
    MissingPrincipal,
    /// A selected field needs a scope the user does not hold.
    MissingScope { coordinate: String },
}

meshward_core::deny_reasons!(GraphqlError, &self {
    GraphqlError::NotGraphql => "not_graphql",
    GraphqlError::InvalidRequest => "invalid_request",
    GraphqlError::BatchTooLarge { .. } => "batch_too_large",
    GraphqlError::NotPersisted => "not_persisted",
    GraphqlError::UnknownPersistedQuery => "unknown_persisted_query",
    GraphqlError::HashMismatch => "hash_mismatch",
    GraphqlError::InvalidDocument => "invalid_document",
    GraphqlError::TooDeep { .. } => "too_deep",
    GraphqlError::TooManyAliases { .. } => "too_many_aliases",
    GraphqlError::TooManyDirectives { .. } => "too_many_directives",
    GraphqlError::Introspection => "introspection_disabled",
    GraphqlError::TooComplex => "too_complex",
    GraphqlError::MutationOverGet => "mutation_over_get",
    GraphqlError::UnknownField { .. } => "unknown_field",
    GraphqlError::TooCostly { .. } => "too_costly",
    GraphqlError::MissingPrincipal => "missing_principal",
    GraphqlError::MissingScope { .. } => "missing_scope",
});

impl GraphqlError {
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
            GraphqlError::TooManyDirectives { max } => format!("more than {max} directives at one place"),
            GraphqlError::Introspection => "introspection is disabled".into(),
            GraphqlError::TooComplex => "the document expands to too many selections".into(),
            GraphqlError::MutationOverGet => "only queries run over GET; send mutations as POST".into(),
            GraphqlError::UnknownField { coordinate } => format!("the schema declares no {coordinate}"),
            GraphqlError::TooCostly { cost, max } => format!("the operations cost {cost}, more than {max}"),
            GraphqlError::MissingPrincipal => "authentication is required for a selected field".into(),
            GraphqlError::MissingScope { coordinate } => format!("{coordinate} needs a scope the token does not grant"),
        }
    }

    pub fn denial(&self) -> Denial {
        let kind = match self {
            GraphqlError::NotGraphql => DenialKind::UnsupportedMediaType,
            GraphqlError::MutationOverGet => DenialKind::MethodNotAllowed,
            GraphqlError::MissingPrincipal => DenialKind::MissingCredentials,
            GraphqlError::NotPersisted | GraphqlError::UnknownPersistedQuery | GraphqlError::Introspection | GraphqlError::MissingScope { .. } => {
                DenialKind::Forbidden { challenge: false }
            }
            GraphqlError::InvalidRequest
            | GraphqlError::BatchTooLarge { .. }
            | GraphqlError::HashMismatch
            | GraphqlError::InvalidDocument
            | GraphqlError::TooDeep { .. }
            | GraphqlError::TooManyAliases { .. }
            | GraphqlError::TooManyDirectives { .. }
            | GraphqlError::TooComplex
            | GraphqlError::UnknownField { .. }
            | GraphqlError::TooCostly { .. } => DenialKind::BadRequest,
        };
        Denial::new(kind, self.reason(), self.message())
    }
}
