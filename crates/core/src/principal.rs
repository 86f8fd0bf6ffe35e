//! The authenticated caller, as published by the JWT stage for the stages after it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Filter-state key (one proxy-wasm property path segment) holding the JSON [`Principal`].
/// Envoy stores it as `wasm.meshward.principal`, which downstream clients cannot set.
pub const PRINCIPAL_PROPERTY: &str = "meshward.principal";

/// A caller whose token was verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    /// Name of the provider (in the JWT configuration) that verified the token.
    pub provider: String,
    pub issuer: String,
    pub subject: Option<String>,
    pub audiences: Vec<String>,
    /// From the `scope` claim (space separated) or the `scp` claim (array or string).
    pub scopes: Vec<String>,
    /// From the provider's `tenant_claim`, when the token carries it.
    pub tenant: Option<String>,
    /// The verified claim set, for policies that match on any claim.
    pub claims: Map<String, Value>,
}

/// The principal an earlier stage handed over in memory, or else the one the JWT filter
/// published in filter state. Never read from request headers; unreadable state is no principal.
pub fn current_principal(host: &dyn meshward_host::Host, handed_over: &mut Option<Principal>) -> Option<Principal> {
    if handed_over.is_none() {
        *handed_over = host
            .property(&[PRINCIPAL_PROPERTY])
            .and_then(|bytes| serde_json::from_slice::<Principal>(&bytes).ok());
    }
    handed_over.clone()
}

impl Principal {
    /// A claim by name, or by a dotted path into nested objects (`realm_access.roles`).
    pub fn claim(&self, path: &str) -> Option<&Value> {
        if let Some(v) = self.claims.get(path) {
            return Some(v);
        }
        let mut parts = path.split('.');
        let mut current = self.claims.get(parts.next()?)?;
        for part in parts {
            current = current.as_object()?.get(part)?;
        }
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_lookup_by_name_and_path() {
        let claims = json!({"sub": "u1", "realm": {"roles": ["admin"]}, "a.b": 1});
        let p = Principal {
            provider: "p".into(),
            issuer: "i".into(),
            subject: Some("u1".into()),
            audiences: vec![],
            scopes: vec![],
            tenant: None,
            claims: claims.as_object().cloned().unwrap_or_default(),
        };
        assert_eq!(p.claim("sub"), Some(&json!("u1")));
        assert_eq!(p.claim("realm.roles"), Some(&json!(["admin"])));
        assert_eq!(p.claim("a.b"), Some(&json!(1)));
        assert_eq!(p.claim("realm.missing"), None);
        assert_eq!(p.claim("sub.x"), None);
    }
}
