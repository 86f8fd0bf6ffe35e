//! Signed records: what makes a chain tamper-evident against whoever can write the log store.
//!
//! A hash chain shows a record removed or altered, but anyone who can write the log can alter a
//! record and recompute every hash after it, or invent a producer. So the VM signs records with
//! an Ed25519 key the log store never sees (given to the proxy as a secret, its public half to
//! verifiers): a signed record carries `"signature": {"kid", "every", "sig"}`, `sig` over the
//! SHA-256 of its canonical form without `hash` and `sig` — `prev` included, so one signature
//! vouches for the record and, through the chain, every record before it (RFC 9162's signed
//! tree heads and CloudTrail's signed digest files do the same for their logs). A producer signs
//! its first record, then at least every `every` records and whenever `seconds` passed since
//! its last signature; `every` travels signed, so a verifier knows how long an unsigned run may
//! be (longer: signatures were removed). `kid` names the public key (the first 16 hex digits of
//! its SHA-256), so keys rotate: verifiers hold the old and the new.

use ct_codecs::{Base64, Decoder, Encoder};
use ed25519_compact::{KeyPair, PublicKey, Seed, Signature};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::canonical;
use crate::config::ConfigError;

/// Domain separation: these bytes are signed before a record's digest, so a signature made for
/// anything else never verifies as an audit record's.
const CONTEXT: &[u8] = b"meshward audit record v1\n";

/// `audit.signing` as configured: where the key is, how often to sign.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The Ed25519 private key: its 32-byte seed, standard base64 (`meshward audit keygen`).
    key: KeySource,
    /// Sign at least every this many records (1 signs every record).
    #[serde(default = "default_every")]
    every: u64,
    /// Sign the next record once this many seconds passed since the last signature.
    #[serde(default = "default_seconds")]
    seconds: u64,
}

fn default_every() -> u64 {
    64
}

fn default_seconds() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySource {
    inline_string: Option<String>,
    environment_variable: Option<String>,
}

impl SigningConfig {
    /// Refuses what no VM could use, before any secret is read.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.every) {
            return Err(ConfigError::new("signing.every", "must be from 1 to 100000 records"));
        }
        if !(1..=3600).contains(&self.seconds) {
            return Err(ConfigError::new("signing.seconds", "must be from 1 to 3600 seconds"));
        }
        match (&self.key.inline_string, &self.key.environment_variable) {
            (Some(text), None) => signing_key(text).map(|_| ()).map_err(|e| ConfigError::new("signing.key.inline_string", e)),
            (None, Some(_)) => Ok(()),
            _ => Err(ConfigError::new("signing.key", "set exactly one of `inline_string` or `environment_variable`")),
        }
    }

    /// The signer, its key read (from the VM's environment where it says so).
    pub fn signer(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Signer, ConfigError> {
        self.check()?;
        let (text, at) = match (&self.key.inline_string, &self.key.environment_variable) {
            (Some(text), _) => (text.clone(), "signing.key.inline_string"),
            (None, Some(var)) => {
                let text = env(var).ok_or_else(|| ConfigError::new("signing.key.environment_variable", format!("environment variable {var:?} is not set in the VM")))?;
                (text, "signing.key.environment_variable")
            }
            (None, None) => return Err(ConfigError::new("signing.key", "set exactly one of `inline_string` or `environment_variable`")),
        };
        let pair = signing_key(&text).map_err(|e| ConfigError::new(at, e))?;
        Ok(Signer { kid: kid(pair.pk.as_ref()), pair, every: self.every, seconds: self.seconds })
    }
}

/// The key pair of a base64 seed; the error never quotes the text (it is a secret).
fn signing_key(text: &str) -> Result<KeyPair, String> {
    let bytes = Base64::decode_to_vec(text.trim(), None).map_err(|_| "is not standard base64".to_string())?;
    let seed: [u8; Seed::BYTES] = bytes.try_into().map_err(|_| "is not a 32-byte Ed25519 seed (`meshward audit keygen` makes one)".to_string())?;
    Ok(KeyPair::from_seed(Seed::new(seed)))
}

/// A public key's id: the first 16 hex digits of its SHA-256.
pub fn kid(public: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(public)[..8])
}

/// A key pair from a 32-byte seed: (private key for the proxy, public key for verifiers, kid),
/// both standard base64.
pub fn key_pair(seed: [u8; 32]) -> (String, String, String) {
    let pair = KeyPair::from_seed(Seed::new(seed));
    let b64 = |bytes: &[u8]| Base64::encode_to_string(bytes).unwrap_or_default();
    (b64(&seed), b64(pair.pk.as_ref()), kid(pair.pk.as_ref()))
}

/// What a VM signs with.
pub struct Signer {
    pair: KeyPair,
    pub kid: String,
    pub every: u64,
    pub seconds: u64,
}

impl std::fmt::Debug for Signer {
    /// The key id only: never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("every", &self.every).field("seconds", &self.seconds).finish()
    }
}

impl Signer {
    /// Adds `signature` to a record that carries its chain fields (not `hash`).
    pub fn sign(&self, record: &mut Map<String, Value>) {
        let mut signature = Map::new();
        signature.insert("kid".into(), Value::String(self.kid.clone()));
        signature.insert("every".into(), Value::from(self.every));
        record.insert("signature".into(), Value::Object(signature));
        let sig = self.pair.sk.sign(message(record), None);
        if let Some(Value::Object(signature)) = record.get_mut("signature") {
            signature.insert("sig".into(), Value::String(Base64::encode_to_string(sig.as_ref()).unwrap_or_default()));
        }
    }
}

/// What is signed: the context, then the hex SHA-256 of the record's canonical form without
/// `hash` and without `signature.sig`.
fn message(record: &Map<String, Value>) -> Vec<u8> {
    let mut unsigned = record.clone();
    unsigned.remove("hash");
    if let Some(Value::Object(signature)) = unsigned.get_mut("signature") {
        signature.remove("sig");
    }
    let digest = crate::hex::encode(&Sha256::digest(canonical(&Value::Object(unsigned))));
    [CONTEXT, digest.as_bytes()].concat()
}

/// A public key a verifier trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    pub kid: String,
    key: PublicKey,
}

impl VerifyingKey {
    /// A public key in standard base64 (as `meshward audit keygen` prints it).
    pub fn parse(text: &str) -> Result<VerifyingKey, String> {
        let bytes = Base64::decode_to_vec(text.trim(), None).map_err(|_| "is not standard base64".to_string())?;
        let key = PublicKey::from_slice(&bytes).map_err(|_| "is not a 32-byte Ed25519 public key".to_string())?;
        Ok(VerifyingKey { kid: kid(&bytes), key })
    }
}

/// A record's signature, checked: `None` when it carries none, else the `every` it promises, or
/// why it does not hold.
pub fn check(record: &Map<String, Value>, keys: &[VerifyingKey]) -> Option<Result<u64, String>> {
    let signature = record.get("signature")?;
    let field = |name: &str| signature.get(name);
    let (Some(kid), Some(every), Some(sig)) =
        (field("kid").and_then(Value::as_str), field("every").and_then(Value::as_u64), field("sig").and_then(Value::as_str))
    else {
        return Some(Err("a signature without kid, every or sig".into()));
    };
    let Some(key) = keys.iter().find(|k| k.kid == kid) else {
        return Some(Err(format!("signed with a key not given to verify (kid {kid})")));
    };
    let valid = Base64::decode_to_vec(sig, None)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .is_some_and(|sig| key.key.verify(message(record), &sig).is_ok());
    Some(if valid && every >= 1 { Ok(every) } else { Err("its signature does not verify (altered, or signed with another key)".into()) })
}
