//! Who is calling, and what a rule asks of the caller before anything in the request is read:
//! the one check ownership rules and gRPC methods share.

use crate::workload::{SpiffeIds, Workload};
use crate::Principal;

/// The caller: the user whose token was verified, the workload whose certificate was.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub user: Option<&'a Principal>,
    pub workload: Option<&'a Workload>,
}

/// What a rule asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The calling workloads allowed; empty: any caller, with or without a certificate.
    pub workloads: SpiffeIds,
    /// A verified user is needed (`false`: the workload alone decides).
    pub require_user: bool,
    /// Scopes the user must hold, every one.
    pub scopes: Vec<String>,
}

/// Why a caller does not meet a [`Requirement`]; each policy reports it as its own deny reason
/// of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    /// `missing_workload`: workloads are named and the peer presented no certificate naming one.
    MissingWorkload,
    /// `workload_not_allowed`.
    WorkloadNotAllowed,
    /// `missing_principal`: no verified user.
    MissingPrincipal,
    /// `missing_scope`.
    MissingScope,
}

impl Requirement {
    /// The calling workload (when the rule names any), then the user and their scopes (unless
    /// no user is required): the user, for the checks that follow.
    pub fn admit<'a>(&self, caller: Caller<'a>) -> Result<Option<&'a Principal>, Unmet> {
        if !self.workloads.is_empty() {
            let workload = caller.workload.ok_or(Unmet::MissingWorkload)?;
            if !self.workloads.permit(&workload.spiffe_id) {
                return Err(Unmet::WorkloadNotAllowed);
            }
        }
        if !self.require_user {
            return Ok(None);
        }
        let user = caller.user.ok_or(Unmet::MissingPrincipal)?;
        if !self.scopes.iter().all(|s| user.scopes.contains(s)) {
            return Err(Unmet::MissingScope);
        }
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_then_user_then_scopes() {
        let user = Principal {
            provider: "p".into(),
            issuer: "i".into(),
            subject: Some("u".into()),
            audiences: vec![],
            scopes: vec!["read".into()],
            tenant: None,
            claims: serde_json::Map::new(),
        };
        let billing = Workload::parse("spiffe://m/ns/billing/sa/billing");
        let orders = Workload::parse("spiffe://m/ns/orders/sa/orders");
        let named = |ids: &[&str]| SpiffeIds::new(ids.iter().map(|s| s.to_string()).collect()).unwrap_or_default();
        let need = |workloads: &[&str], require_user: bool, scopes: &[&str]| Requirement {
            workloads: named(workloads),
            require_user,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
        // (requirement, user?, workload, outcome: Ok(user returned?))
        type Row<'a> = (Requirement, bool, &'a Option<Workload>, Result<bool, Unmet>);
        let rows: Vec<Row> = vec![
            (need(&[], true, &["read"]), true, &None, Ok(true)),
            (need(&[], true, &["write"]), true, &None, Err(Unmet::MissingScope)),
            (need(&[], true, &[]), false, &None, Err(Unmet::MissingPrincipal)),
            (need(&["spiffe://m/ns/billing/"], false, &[]), false, &billing, Ok(false)),
            (need(&["spiffe://m/ns/billing/"], false, &[]), true, &orders, Err(Unmet::WorkloadNotAllowed)),
            (need(&["spiffe://m/ns/billing/"], true, &["read"]), true, &None, Err(Unmet::MissingWorkload)),
            (need(&["spiffe://m/ns/billing/"], true, &["read"]), false, &billing, Err(Unmet::MissingPrincipal)),
        ];
        for (i, (requirement, with_user, workload, want)) in rows.into_iter().enumerate() {
            let got = requirement.admit(Caller { user: with_user.then_some(&user), workload: workload.as_ref() });
            assert_eq!(got.map(|u| u.is_some()), want, "row {i}");
        }
    }
}
