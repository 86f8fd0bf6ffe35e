//! The authenticated caller, as published by the JWT stage for the stages after it.
//!
//! A principal is made once per verified token and shared (`Rc`), never copied per request:
//! the JWT stage's token cache holds it with its filter-state encoding, the bundle hands it to
//! later stages in memory, and a module reading it from filter state decodes each distinct
//! encoding once ([`current_principal`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

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

/// Filter-state encodings decoded lately in this VM, newest last: a client sends the same
/// token for its whole session, so the same bytes come back request after request.
const DECODED_KEPT: usize = 64;

thread_local! {
    static DECODED: RefCell<VecDeque<(Vec<u8>, Rc<Principal>)>> = const { RefCell::new(VecDeque::new()) };
}

/// The principal an earlier stage handed over in memory, or else the one the JWT filter
/// published in filter state. Never read from request headers; unreadable state is no principal.
pub fn current_principal(host: &dyn meshward_host::Host, handed_over: &mut Option<Rc<Principal>>) -> Option<Rc<Principal>> {
    if handed_over.is_none() {
        *handed_over = host.property(&[PRINCIPAL_PROPERTY]).and_then(|bytes| decode(&bytes));
    }
    handed_over.clone()
}

/// Decodes a filter-state principal, once per distinct encoding (compared whole).
fn decode(bytes: &[u8]) -> Option<Rc<Principal>> {
    DECODED.with(|decoded| {
        let mut decoded = decoded.borrow_mut();
        if let Some((_, principal)) = decoded.iter().rev().find(|(b, _)| b.as_slice() == bytes) {
            return Some(Rc::clone(principal));
        }
        let principal = Rc::new(serde_json::from_slice::<Principal>(bytes).ok()?);
        if decoded.len() >= DECODED_KEPT {
            decoded.pop_front();
        }
        decoded.push_back((bytes.to_vec(), Rc::clone(&principal)));
        Some(principal)
    })
}

/// The filter-state encoding of a principal (JSON), made once per verified token.
pub fn encode(principal: &Principal) -> Result<Rc<[u8]>, String> {
    serde_json::to_vec(principal).map(Rc::from).map_err(|e| e.to_string())
}

impl Principal {
    /// The principal's value(s) for a claim, as rules compare them: a string, a number, or the
    /// strings / numbers of an array; `sub` and `tenant` fall back to the subject and tenant.
    pub fn claim_values(&self, claim: &str) -> Vec<String> {
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match self.claim(claim) {
            Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => match claim {
                "tenant" => self.tenant.clone().into_iter().collect(),
                "sub" => self.subject.clone().into_iter().collect(),
                _ => Vec::new(),
            },
        }
    }

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

    #[test]
    fn filter_state_is_decoded_once_per_encoding_and_unreadable_is_none() {
        use meshward_host::FakeHost;
        let mut host = FakeHost::default();
        let p = Principal {
            provider: "p".into(),
            issuer: "i".into(),
            subject: Some("u1".into()),
            audiences: vec![],
            scopes: vec!["a".into()],
            tenant: Some("t".into()),
            claims: Map::new(),
        };
        let encoded = encode(&p).unwrap();
        host.properties.insert(vec![PRINCIPAL_PROPERTY.to_string()], encoded.to_vec());
        let first = current_principal(&host, &mut None).unwrap();
        let second = current_principal(&host, &mut None).unwrap();
        assert_eq!(*first, p);
        assert!(Rc::ptr_eq(&first, &second), "the same bytes decode to the same principal");
        let mut other = p.clone();
        other.subject = Some("u2".into());
        host.properties.insert(vec![PRINCIPAL_PROPERTY.to_string()], encode(&other).unwrap().to_vec());
        assert_eq!(current_principal(&host, &mut None).unwrap().subject.as_deref(), Some("u2"));
        host.properties.insert(vec![PRINCIPAL_PROPERTY.to_string()], b"{not json".to_vec());
        assert_eq!(current_principal(&host, &mut None), None);
        // Handed over in memory: filter state is not read.
        let mut handed = Some(Rc::clone(&first));
        assert!(Rc::ptr_eq(&current_principal(&host, &mut handed).unwrap(), &first));
    }
}
