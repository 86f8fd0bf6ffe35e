//! Verified tokens, remembered per VM so a client that sends the same token again does not pay
//! for the signature again (Envoy's `jwt_authn` has the same idea: `jwt_cache_config`), and
//! tokens whose signature failed, so a forged token repeated is refused cheaply.
//!
//! Only the signature, issuer and audience results are reused: they depend on the token bytes
//! and the provider's keys alone. Time claims are checked again on every hit, and an entry is
//! only valid for the key-set generation it was verified with, so a rotated-out key stops
//! verifying at once. Bounded: the oldest entry goes first.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::rc::Rc;

use meshward_core::principal::encode;
use meshward_core::Principal;

use crate::JwtError;

/// A verified token's principal and its filter-state encoding, made once per token and shared
/// by every request that presents it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub principal: Rc<Principal>,
    /// The principal as published in filter state; empty when it could not be encoded (the
    /// stages after the JWT filter then find no principal and deny).
    pub encoded: Rc<[u8]>,
}

impl Verified {
    pub fn new(principal: Principal) -> Self {
        let encoded = encode(&principal).unwrap_or_else(|_| Rc::from(Vec::new()));
        Verified { principal: Rc::new(principal), encoded }
    }
}

/// A map of at most `capacity` entries, the oldest going first; capacity 0 keeps nothing. Both
/// caches below are one of these.
struct Bounded<K, V> {
    capacity: usize,
    entries: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Bounded { capacity, entries: HashMap::new(), order: VecDeque::new() }
    }

    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key)
    }

    /// Inserts or replaces; a new key may push the oldest one out.
    fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }
}

impl<K, V> std::fmt::Debug for Bounded<K, V> {
    /// Counts only: never prints tokens or claims.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.entries.len(), self.capacity)
    }
}

struct Entry {
    provider: usize,
    generation: u64,
    verified: Verified,
}

/// A bounded map from (provider, token) to what the token verified to. Keyed by the token
/// itself, compared whole: a hit costs a hash of the token, no digest.
#[derive(Debug)]
pub struct TokenCache {
    entries: Bounded<Rc<str>, Entry>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        TokenCache { entries: Bounded::new(capacity) }
    }

    /// What `token` verified to for `provider` with key-set `generation`.
    pub fn get(&self, provider: usize, generation: u64, token: &str) -> Option<Verified> {
        self.entries
            .get(token)
            .filter(|e| e.provider == provider && e.generation == generation)
            .map(|e| e.verified.clone())
    }

    pub fn insert(&mut self, provider: usize, generation: u64, token: &str, verified: &Verified) {
        self.entries.insert(Rc::from(token), Entry { provider, generation, verified: verified.clone() });
    }

    pub fn len(&self) -> usize {
        self.entries.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.entries.is_empty()
    }
}

/// Tokens whose signature did not verify, remembered per VM so the same forged token sent again
/// is refused without paying for the signature again: a flood of one forged token costs a hash
/// per request, not a verification. Keyed by a keyed 64-bit hash of the token (random per VM):
/// a forged token is never kept whole, and a collision could only refuse, never admit. Valid
/// only for the key-set generation it was refused with. Bounded: the oldest entry goes first.
#[derive(Debug)]
pub struct RefusedTokens {
    hasher: RandomState,
    entries: Bounded<u64, (usize, u64, JwtError)>,
}

impl RefusedTokens {
    /// At most `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        RefusedTokens { hasher: RandomState::new(), entries: Bounded::new(capacity) }
    }

    /// Why `token` was refused for `provider` with key-set `generation`, if it was.
    pub fn get(&self, provider: usize, generation: u64, token: &str) -> Option<JwtError> {
        self.entries
            .get(&self.hasher.hash_one(token))
            .filter(|(p, g, _)| *p == provider && *g == generation)
            .map(|(_, _, e)| *e)
    }

    pub fn insert(&mut self, provider: usize, generation: u64, token: &str, error: JwtError) {
        self.entries.insert(self.hasher.hash_one(token), (provider, generation, error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn refused_tokens_hit_for_the_same_provider_token_and_generation_bounded() {
        let mut refused = RefusedTokens::new(2);
        refused.insert(0, 1, "forged-1", JwtError::BadSignature);
        assert_eq!(refused.get(0, 1, "forged-1"), Some(JwtError::BadSignature));
        assert_eq!(refused.get(1, 1, "forged-1"), None, "other provider");
        assert_eq!(refused.get(0, 2, "forged-1"), None, "keys changed since");
        assert_eq!(refused.get(0, 1, "forged-2"), None);
        refused.insert(0, 1, "forged-2", JwtError::BadSignature);
        refused.insert(0, 1, "forged-3", JwtError::BadSignature);
        assert_eq!((refused.get(0, 1, "forged-1"), refused.entries.entries.len()), (None, 2), "oldest first");
        let mut off = RefusedTokens::new(0);
        off.insert(0, 0, "forged", JwtError::BadSignature);
        assert_eq!(off.get(0, 0, "forged"), None);
    }

    fn principal(sub: &str) -> Verified {
        Verified::new(Principal {
            provider: "p".into(),
            issuer: "i".into(),
            subject: Some(sub.into()),
            audiences: vec![],
            scopes: vec![],
            tenant: None,
            claims: Map::new(),
        })
    }

    #[test]
    fn hits_only_for_the_same_provider_token_and_generation() {
        let mut cache = TokenCache::new(2);
        cache.insert(0, 1, "t1", &principal("a"));
        assert_eq!(cache.get(0, 1, "t1").and_then(|v| v.principal.subject.clone()), Some("a".into()));
        assert!(cache.get(1, 1, "t1").is_none(), "other provider");
        assert!(cache.get(0, 2, "t1").is_none(), "keys changed since");
        assert!(cache.get(0, 1, "t2").is_none());
    }

    #[test]
    fn bounded_oldest_first_and_zero_disables() {
        let mut cache = TokenCache::new(2);
        for t in ["a", "b", "c"] {
            cache.insert(0, 0, t, &principal(t));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(0, 0, "a").is_none());
        assert!(cache.get(0, 0, "c").is_some());
        let mut off = TokenCache::new(0);
        off.insert(0, 0, "a", &principal("a"));
        assert!(off.is_empty() && off.get(0, 0, "a").is_none());
    }
}
