//! Tokens a provider no longer accepts although they verify: by token id (`jti`), or every
//! token of a subject (`sub`), optionally only those issued before a time (`iat`) — "log this
//! user out everywhere". The lists are part of the policy, so `meshward serve` pushes a
//! revocation to every worker of every sidecar within seconds, without a restart.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use meshward_core::config::ConfigError;

use crate::JwtError;

/// At most this many entries per provider: the lists are for incidents, not a session store.
pub const MAX_REVOKED: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRevoked {
    #[serde(default)]
    token_ids: Vec<String>,
    #[serde(default)]
    subjects: Vec<RawRevokedSubject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevokedSubject {
    sub: String,
    /// Unix seconds; tokens issued at or after it stay valid. Absent: every token.
    issued_before: Option<u64>,
}

/// A provider's revocations, compiled for lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    token_ids: HashSet<String>,
    /// Subject → tokens issued before this time are revoked (`u64::MAX`: all of them).
    subjects: HashMap<String, u64>,
}

impl Revocations {
    pub(crate) fn compile(at: &str, raw: RawRevoked) -> Result<Revocations, ConfigError> {
        if raw.token_ids.len() + raw.subjects.len() > MAX_REVOKED {
            return Err(ConfigError::new(at, format!("at most {MAX_REVOKED} token_ids and subjects in all")));
        }
        let mut out = Revocations::default();
        for (i, id) in raw.token_ids.into_iter().enumerate() {
            if id.is_empty() {
                return Err(ConfigError::new(format!("{at}.token_ids[{i}]"), "is empty"));
            }
            out.token_ids.insert(id);
        }
        for (i, s) in raw.subjects.into_iter().enumerate() {
            if s.sub.is_empty() {
                return Err(ConfigError::new(format!("{at}.subjects[{i}].sub"), "is empty"));
            }
            // Listed twice: the wider revocation holds.
            let before = s.issued_before.unwrap_or(u64::MAX);
            let entry = out.subjects.entry(s.sub).or_insert(before);
            *entry = (*entry).max(before);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty() && self.subjects.is_empty()
    }

    /// `Err(TokenRevoked)` when the verified claims name a revoked token. A subject revoked
    /// up to a time, in a token without a readable `iat`, counts as revoked: it cannot show it
    /// was issued after.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), JwtError> {
        if self.is_empty() {
            return Ok(());
        }
        if claims.get("jti").and_then(Value::as_str).is_some_and(|jti| self.token_ids.contains(jti)) {
            return Err(JwtError::TokenRevoked);
        }
        let Some(before) = claims.get("sub").and_then(Value::as_str).and_then(|s| self.subjects.get(s)) else {
            return Ok(());
        };
        let issued_at = claims.get("iat").and_then(Value::as_f64).filter(|t| t.is_finite() && *t >= 0.0);
        match issued_at {
            Some(iat) if iat >= *before as f64 => Ok(()),
            _ => Err(JwtError::TokenRevoked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn revocations(raw: Value) -> Revocations {
        Revocations::compile("providers.idp.revoked", serde_json::from_value(raw).unwrap()).unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn what_is_revoked() {
        let r = revocations(json!({
            "token_ids": ["t-1"],
            "subjects": [{"sub": "mallory"}, {"sub": "alice", "issued_before": 1000}],
        }));
        let table = [
            (json!({"sub": "bob", "jti": "t-1"}), Err(JwtError::TokenRevoked)),
            (json!({"sub": "bob", "jti": "t-2"}), Ok(())),
            (json!({"sub": "bob"}), Ok(())),
            (json!({"sub": "mallory", "iat": 5000}), Err(JwtError::TokenRevoked)),
            (json!({"sub": "alice", "iat": 999}), Err(JwtError::TokenRevoked)),
            (json!({"sub": "alice", "iat": 1000}), Ok(())),
            (json!({"sub": "alice"}), Err(JwtError::TokenRevoked)),
            (json!({"sub": "alice", "iat": "2000"}), Err(JwtError::TokenRevoked)),
            (json!({"sub": 7, "jti": 1}), Ok(())),
        ];
        for (c, expected) in table {
            assert_eq!(r.check(&claims(c.clone())), expected, "{c}");
        }
    }

    #[test]
    fn a_subject_listed_twice_keeps_the_wider_revocation() {
        let r = revocations(json!({"subjects": [{"sub": "a", "issued_before": 10}, {"sub": "a"}]}));
        assert_eq!(r.check(&claims(json!({"sub": "a", "iat": 50}))), Err(JwtError::TokenRevoked));
    }

    #[test]
    fn bad_lists_are_refused_with_the_field() {
        let e = Revocations::compile("r", serde_json::from_value(json!({"token_ids": [""]})).unwrap()).unwrap_err();
        assert!(e.to_string().contains("r.token_ids[0]"), "{e}");
        let e = Revocations::compile("r", serde_json::from_value(json!({"subjects": [{"sub": ""}]})).unwrap()).unwrap_err();
        assert!(e.to_string().contains("r.subjects[0].sub"), "{e}");
        assert!(serde_json::from_value::<RawRevoked>(json!({"jti": ["x"]})).is_err(), "unknown field");
    }
}
