//! Why a request was refused. Each variant is one deny reason users see.

use meshward_core::caller::Unmet;
use meshward_core::{Denial, DenialKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnershipError {
    /// No verified principal in filter state (the JWT filter did not run or did not verify).
    MissingPrincipal,
    /// The rule names calling workloads and the peer presented no verified certificate with
    /// a SPIFFE ID.
    MissingWorkload,
    /// The calling workload is not one the rule allows.
    WorkloadNotAllowed,
    /// A scope the rule requires is not granted.
    MissingScope,
    /// A claim the rule requires is absent or has another value.
    MissingClaim,
    /// The object belongs to another tenant. `hide`: answer 404 instead of 403.
    TenantBoundary { hide: bool },
    /// The object belongs to another principal. `hide`: answer 404 instead of 403.
    NotOwner { hide: bool },
    /// The request body needed for a check is neither JSON nor a form of its content type.
    InvalidBody,
    /// The request body is JSON that services read differently (duplicate or case-variant
    /// members, a byte-order mark, bad UTF-8, lone surrogates, integers past 64 bits).
    AmbiguousJson,
    /// The request body is a form that services read differently (a field repeated, or
    /// fields whose names differ only in case).
    AmbiguousForm,
    /// A value needed for a check appears more than once (`?user=a&user=b`).
    AmbiguousRequest,
    /// No rule covers this method and path and unmatched requests are denied.
    RouteNotCovered,
}

impl From<Unmet> for OwnershipError {
    fn from(unmet: Unmet) -> Self {
        match unmet {
            Unmet::MissingWorkload => OwnershipError::MissingWorkload,
            Unmet::WorkloadNotAllowed => OwnershipError::WorkloadNotAllowed,
            Unmet::MissingPrincipal => OwnershipError::MissingPrincipal,
            Unmet::MissingScope => OwnershipError::MissingScope,
        }
    }
}

meshward_core::deny_reasons!(OwnershipError, self {
    OwnershipError::MissingPrincipal => "missing_principal",
    OwnershipError::MissingWorkload => "missing_workload",
    OwnershipError::WorkloadNotAllowed => "workload_not_allowed",
    OwnershipError::MissingScope => "missing_scope",
    OwnershipError::MissingClaim => "missing_claim",
    OwnershipError::TenantBoundary { .. } => "tenant_boundary",
    OwnershipError::NotOwner { .. } => "not_owner",
    OwnershipError::InvalidBody => "invalid_body",
    OwnershipError::AmbiguousJson => "ambiguous_json",
    OwnershipError::AmbiguousForm => "ambiguous_form",
    OwnershipError::AmbiguousRequest => "ambiguous_request",
    OwnershipError::RouteNotCovered => "route_not_covered",
});

impl OwnershipError {
    pub fn message(self) -> &'static str {
        match self {
            OwnershipError::MissingPrincipal => "authentication is required",
            OwnershipError::MissingWorkload => "the calling workload is not identified by a client certificate",
            OwnershipError::WorkloadNotAllowed => "the calling workload may not call this route",
            OwnershipError::MissingScope => "a required scope is missing",
            OwnershipError::MissingClaim => "a required claim is missing",
            OwnershipError::TenantBoundary { hide: true } | OwnershipError::NotOwner { hide: true } => "not found",
            OwnershipError::TenantBoundary { hide: false } => "the object belongs to another tenant",
            OwnershipError::NotOwner { hide: false } => "the object belongs to someone else",
            OwnershipError::InvalidBody => "the request body is not valid JSON or form data",
            OwnershipError::AmbiguousJson => "the request body is JSON that services read differently",
            OwnershipError::AmbiguousForm => "the request body is a form that services read differently",
            OwnershipError::AmbiguousRequest => "the request repeats a value that is checked",
            OwnershipError::RouteNotCovered => "no authorization rule covers this route",
        }
    }

    pub fn denial(self) -> Denial {
        let kind = match self {
            OwnershipError::MissingPrincipal => DenialKind::MissingCredentials,
            OwnershipError::TenantBoundary { hide: true } | OwnershipError::NotOwner { hide: true } => DenialKind::NotFound,
            OwnershipError::InvalidBody | OwnershipError::AmbiguousJson | OwnershipError::AmbiguousForm | OwnershipError::AmbiguousRequest => {
                DenialKind::BadRequest
            }
            OwnershipError::MissingWorkload
            | OwnershipError::WorkloadNotAllowed
            | OwnershipError::MissingScope
            | OwnershipError::MissingClaim
            | OwnershipError::TenantBoundary { hide: false }
            | OwnershipError::NotOwner { hide: false }
            | OwnershipError::RouteNotCovered => DenialKind::Forbidden { challenge: false },
        };
        Denial::new(kind, self.reason(), self.message())
    }
}
