//! JSON Web Key Sets (RFC 7517), parsed once into ready-to-use verification keys.

#[cfg(feature = "signatures")]
use std::rc::Rc;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use hmac::{Hmac, KeyInit, Mac};
#[cfg(feature = "signatures")]
use p256::ecdsa::signature::Verifier;
use serde::Deserialize;

/// Largest JWKS document accepted, local or fetched.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The signature algorithms meshward verifies. `none` is deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    /// Parses a JOSE `alg` name; `None` for `none` and anything unsupported.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            _ => return None,
        })
    }

    #[cfg(feature = "signatures")]
    const RSA: [Algorithm; 6] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
    const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
}

/// Why a key set was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError(pub String);

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hash an HMAC or RSA algorithm signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn of(alg: Algorithm) -> Hash {
        match alg {
            Algorithm::HS384 | Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 => Hash::Sha384,
            Algorithm::HS512 | Algorithm::RS512 | Algorithm::PS512 => Hash::Sha512,
            _ => Hash::Sha256,
        }
    }
}

/// An RSA public key (2048 to 4096 bits, exponent 65537) with its Montgomery parameters,
/// prepared once when the key set is read and shared by the algorithms the JWK allows.
#[cfg(feature = "signatures")]
pub struct RsaKey(rsa::PublicKey);

#[cfg(feature = "signatures")]
impl RsaKey {
    /// RFC 7518 §3.3: at least 2048 bits; larger than 4096 or another exponent is refused
    /// (every verification pays for the modulus size and the exponent's bits).
    fn from_components(n: &[u8], e: &[u8]) -> Result<RsaKey, JwksError> {
        let invalid = |why: &str| JwksError(format!("invalid RSA key: {why}"));
        let n = significant(n);
        if !(256..=512).contains(&n.len()) {
            return Err(invalid("the modulus must be 2048 to 4096 bits"));
        }
        if significant(e) != [1, 0, 1] {
            return Err(invalid("the exponent must be 65537"));
        }
        let n = rsa::BoxedUint::from_be_slice_vartime(n);
        let e = rsa::BoxedUint::from(65537u64);
        rsa::PublicKey::new_with_size_limits(n, e, 2048..=4096).map(RsaKey).map_err(|err| invalid(&err.to_string()))
    }
}

/// A big-endian number without its leading zero bytes.
#[cfg(feature = "signatures")]
fn significant(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|b| *b != 0).map_or(&[], |i| &bytes[i..])
}

/// A verification key for exactly one algorithm.
pub enum VerifyingKey {
    Hmac(Algorithm, Vec<u8>),
    #[cfg(feature = "signatures")]
    Rsa(Algorithm, Rc<RsaKey>),
    #[cfg(feature = "signatures")]
    ES256(p256::ecdsa::VerifyingKey),
    #[cfg(feature = "signatures")]
    ES384(p384::ecdsa::VerifyingKey),
    #[cfg(feature = "signatures")]
    EdDSA(ed25519_compact::PublicKey),
}

impl std::fmt::Debug for VerifyingKey {
    /// Never prints key material (HMAC keys are secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({:?})", self.algorithm())
    }
}

/// What a signature check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    Invalid,
    /// Not a signature of this algorithm at all (the wrong length for it).
    Unreadable,
}

impl VerifyingKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::Hmac(alg, _) => *alg,
            #[cfg(feature = "signatures")]
            VerifyingKey::Rsa(alg, _) => *alg,
            #[cfg(feature = "signatures")]
            VerifyingKey::ES256(_) => Algorithm::ES256,
            #[cfg(feature = "signatures")]
            VerifyingKey::ES384(_) => Algorithm::ES384,
            #[cfg(feature = "signatures")]
            VerifyingKey::EdDSA(_) => Algorithm::EdDSA,
        }
    }

    /// Checks `signature` over `signing_input` (the token's `header.payload`). HMAC tags are
    /// compared in constant time; the rest is the maintained crates' own verification.
    pub fn check_signature(&self, signing_input: &[u8], signature: &[u8]) -> SignatureCheck {
        let valid = |ok: bool| if ok { SignatureCheck::Valid } else { SignatureCheck::Invalid };
        match self {
            VerifyingKey::Hmac(alg, secret) => valid(hmac_matches(Hash::of(*alg), secret, signing_input, signature)),
            #[cfg(feature = "signatures")]
            VerifyingKey::Rsa(alg, key) => {
                let key = &key.0;
                let pss = matches!(alg, Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512);
                let verified = match (Hash::of(*alg), pss) {
                    (Hash::Sha256, false) => key.pkcs1v15_verify::<sha2::Sha256>(signing_input, signature),
                    (Hash::Sha384, false) => key.pkcs1v15_verify::<sha2::Sha384>(signing_input, signature),
                    (Hash::Sha512, false) => key.pkcs1v15_verify::<sha2::Sha512>(signing_input, signature),
                    (Hash::Sha256, true) => key.pss_verify::<sha2::Sha256>(signing_input, signature),
                    (Hash::Sha384, true) => key.pss_verify::<sha2::Sha384>(signing_input, signature),
                    (Hash::Sha512, true) => key.pss_verify::<sha2::Sha512>(signing_input, signature),
                };
                valid(verified.is_ok())
            }
            #[cfg(feature = "signatures")]
            VerifyingKey::ES256(key) if signature.len() == 64 => valid(
                p256::ecdsa::Signature::from_slice(signature).is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            ),
            #[cfg(feature = "signatures")]
            VerifyingKey::ES384(key) if signature.len() == 96 => valid(
                p384::ecdsa::Signature::from_slice(signature).is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            ),
            #[cfg(feature = "signatures")]
            VerifyingKey::EdDSA(key) if signature.len() == 64 => valid(
                ed25519_compact::Signature::from_slice(signature).is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            ),
            // JWS (RFC 7518 §3.4, RFC 8037 §3.1): fixed-size signatures, r‖s for ECDSA.
            #[cfg(feature = "signatures")]
            VerifyingKey::ES256(_) | VerifyingKey::ES384(_) | VerifyingKey::EdDSA(_) => SignatureCheck::Unreadable,
        }
    }
}

fn hmac_matches(hash: Hash, secret: &[u8], input: &[u8], tag: &[u8]) -> bool {
    fn check<M: Mac + KeyInit>(secret: &[u8], input: &[u8], tag: &[u8]) -> bool {
        let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else { return false };
        mac.update(input);
        mac.verify_slice(tag).is_ok()
    }
    match hash {
        Hash::Sha256 => check::<Hmac<sha2::Sha256>>(secret, input, tag),
        Hash::Sha384 => check::<Hmac<sha2::Sha384>>(secret, input, tag),
        Hash::Sha512 => check::<Hmac<sha2::Sha512>>(secret, input, tag),
    }
}

/// One JWK, expanded into a key per algorithm it may verify.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// Keys for each permitted algorithm: one when the JWK names its `alg`, else every
    /// algorithm of its key type (an RSA key without `alg` verifies RS* and PS*).
    pub keys: Vec<VerifyingKey>,
}

/// A parsed key set.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

/// The outcome of parsing a key set: the keys, and notes on keys that were skipped.
#[derive(Debug)]
pub struct ParsedJwks {
    pub set: KeySet,
    pub skipped: Vec<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
// Key members only public-key signatures read are left unread without them.
#[cfg_attr(not(feature = "signatures"), allow(dead_code))]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    k: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS document.
///
/// `strict` (for keys written in the configuration): any unusable key refuses the whole set.
/// Otherwise (fetched sets, which may carry encryption keys or types meshward does not use):
/// unusable keys are skipped and reported, and only a set with no usable key is refused.
pub fn parse_jwks(json: &[u8], strict: bool) -> Result<ParsedJwks, JwksError> {
    if json.len() > MAX_JWKS_BYTES {
        return Err(JwksError(format!(
            "JWKS is {} bytes, more than the {MAX_JWKS_BYTES} accepted",
            json.len()
        )));
    }
    let raw: RawJwks = serde_json::from_slice(json)
        .map_err(|e| JwksError(format!("JWKS is not a JSON object with a `keys` array: {e}")))?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, value) in raw.keys.into_iter().enumerate() {
        let parsed = serde_json::from_value::<RawJwk>(value)
            .map_err(|e| JwksError(e.to_string()))
            .and_then(|jwk| parse_jwk(&jwk));
        match parsed {
            Ok(Some(jwk)) => set.keys.push(jwk),
            Ok(None) => skipped.push(format!("keys[{i}]: not a signature key (use != sig)")),
            Err(e) if strict => return Err(JwksError(format!("keys[{i}]: {e}"))),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    if set.keys.is_empty() {
        let why = skipped.first().map(String::as_str).unwrap_or("the set is empty");
        return Err(JwksError(format!("JWKS has no usable signature key ({why})")));
    }
    Ok(ParsedJwks { set, skipped })
}

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, JwksError> {
    let value = value.ok_or_else(|| JwksError(format!("missing `{field}`")))?;
    Base64UrlSafeNoPadding::decode_to_vec(value.trim_end_matches('='), None)
        .map_err(|_| JwksError(format!("`{field}` is not base64url")))
}

fn parse_jwk(jwk: &RawJwk) -> Result<Option<Jwk>, JwksError> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let declared = match &jwk.alg {
        None => None,
        Some(name) => Some(
            Algorithm::from_name(name)
                .ok_or_else(|| JwksError(format!("unsupported `alg` {name:?}")))?,
        ),
    };
    let allowed = |candidates: &[Algorithm]| -> Result<Vec<Algorithm>, JwksError> {
        match declared {
            None => Ok(candidates.to_vec()),
            Some(a) if candidates.contains(&a) => Ok(vec![a]),
            Some(a) => Err(JwksError(format!("`alg` {a:?} does not fit kty {}", jwk.kty))),
        }
    };
    #[cfg(feature = "signatures")]
    let bad = |what: &str| JwksError(format!("invalid {what} key"));
    let mut keys = Vec::new();
    match jwk.kty.as_str() {
        "oct" => {
            let secret = b64("k", jwk.k.as_ref())?;
            for alg in allowed(&Algorithm::HMAC)? {
                // RFC 7518 §3.2: the key must be at least as long as the hash output.
                let min = match alg {
                    Algorithm::HS256 => 32,
                    Algorithm::HS384 => 48,
                    _ => 64,
                };
                if secret.len() < min {
                    if declared.is_some() || alg == Algorithm::HS256 {
                        return Err(JwksError(format!(
                            "HMAC key is {} bytes; {alg:?} needs at least {min}",
                            secret.len()
                        )));
                    }
                    continue;
                }
                keys.push(VerifyingKey::Hmac(alg, secret.clone()));
            }
        }
        #[cfg(not(feature = "signatures"))]
        "RSA" | "EC" | "OKP" => {
            return Err(JwksError(format!(
                "kty {}: this module verifies no public-key signatures (an edition built for Envoy's jwt_authn to verify, read with `from_native_jwt_authn`); deploy a module with signatures for this key set",
                jwk.kty
            )))
        }
        #[cfg(feature = "signatures")]
        "RSA" => {
            let n = b64("n", jwk.n.as_ref())?;
            let e = b64("e", jwk.e.as_ref())?;
            let algorithms = allowed(&Algorithm::RSA)?;
            let key = Rc::new(RsaKey::from_components(&n, &e)?);
            keys.extend(algorithms.into_iter().map(|alg| VerifyingKey::Rsa(alg, Rc::clone(&key))));
        }
        #[cfg(feature = "signatures")]
        "EC" => {
            let x = b64("x", jwk.x.as_ref())?;
            let y = b64("y", jwk.y.as_ref())?;
            let (alg, size) = match jwk.crv.as_deref() {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                other => return Err(JwksError(format!("unsupported EC curve {other:?}"))),
            };
            allowed(&[alg])?;
            if x.len() != size || y.len() != size {
                return Err(bad("EC"));
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * size);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            keys.push(if alg == Algorithm::ES256 {
                VerifyingKey::ES256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| bad("EC"))?)
            } else {
                VerifyingKey::ES384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| bad("EC"))?)
            });
        }
        #[cfg(feature = "signatures")]
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(JwksError(format!("unsupported OKP curve {:?}", jwk.crv)));
            }
            allowed(&[Algorithm::EdDSA])?;
            let x = b64("x", jwk.x.as_ref())?;
            keys.push(VerifyingKey::EdDSA(
                ed25519_compact::PublicKey::from_slice(&x).map_err(|_| bad("Ed25519"))?,
            ));
        }
        other => return Err(JwksError(format!("unsupported kty {other:?}"))),
    }
    Ok(Some(Jwk {
        kid: jwk.kid.clone(),
        keys,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestKeys;
    use serde_json::json;

    fn algs(set: &KeySet) -> Vec<Vec<Algorithm>> {
        set.keys.iter().map(|k| k.keys.iter().map(VerifyingKey::algorithm).collect()).collect()
    }

    fn b64_of(bytes: &[u8]) -> String {
        crate::testkit::b64(bytes)
    }

    /// An odd modulus of `bytes` bytes with its top bit set (a structurally valid RSA modulus).
    fn rsa_n(bytes: usize) -> String {
        b64_of(&vec![0xC3; bytes])
    }

    #[test]
    fn rsa_keys_are_prepared_once_for_every_algorithm_they_allow() {
        // A leading zero byte (some issuers send one) does not change the key's size.
        let padded = b64_of(&[&[0u8][..], &[0xC3; 256]].concat());
        for n in [rsa_n(256), padded, rsa_n(512)] {
            let doc = json!({"keys": [{"kty": "RSA", "n": n, "e": "AAEAAQ"}]}).to_string();
            let set = parse_jwks(doc.as_bytes(), true).unwrap().set;
            assert_eq!(algs(&set), vec![Algorithm::RSA.to_vec()]);
        }
        let pinned = json!({"keys": [{"kty": "RSA", "alg": "PS384", "n": rsa_n(384), "e": "AQAB"}]}).to_string();
        assert_eq!(algs(&parse_jwks(pinned.as_bytes(), true).unwrap().set), vec![vec![Algorithm::PS384]]);
    }

    #[test]
    fn key_types_expand_to_their_algorithms() {
        let parsed = parse_jwks(TestKeys::new().jwks().as_bytes(), true).unwrap();
        assert_eq!(
            algs(&parsed.set),
            vec![
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                vec![Algorithm::ES256],
                vec![Algorithm::EdDSA],
            ]
        );
        let hs32 = json!({"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]});
        // A 32-byte secret is long enough for HS256 only (RFC 7518 §3.2).
        assert_eq!(algs(&parse_jwks(hs32.to_string().as_bytes(), true).unwrap().set), vec![vec![Algorithm::HS256]]);
        let pinned = json!({"keys": [{"kty": "oct", "alg": "HS512", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]});
        assert_eq!(algs(&parse_jwks(pinned.to_string().as_bytes(), true).unwrap().set), vec![vec![Algorithm::HS512]]);
    }

    #[test]
    fn fetched_sets_skip_what_they_cannot_use_configured_sets_refuse_it() {
        let good: serde_json::Value = serde_json::from_str(&TestKeys::new().jwks()).unwrap();
        let mut keys = good["keys"].as_array().unwrap().clone();
        keys.push(json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}));
        keys.push(json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}));
        let doc = json!({"keys": keys}).to_string();
        let lenient = parse_jwks(doc.as_bytes(), false).unwrap();
        assert_eq!(lenient.set.keys.len(), 3);
        assert_eq!(lenient.skipped.len(), 2);
        assert!(parse_jwks(doc.as_bytes(), true).unwrap_err().0.contains("keys[4]: unsupported EC curve"));
    }

    #[test]
    fn broken_sets_are_refused() {
        let cases = [
            ("not json".to_string(), "not a JSON object"),
            (json!({"keys": []}).to_string(), "no usable signature key"),
            (json!({"kid": "x"}).to_string(), "not a JSON object"),
            (json!({"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}).to_string(), "needs at least 32"),
            (json!({"keys": [{"kty": "oct", "alg": "RS256", "k": "AAAA"}]}).to_string(), "does not fit kty"),
            (json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}).to_string(), "invalid RSA key"),
            (json!({"keys": [{"kty": "RSA", "n": rsa_n(128), "e": "AQAB"}]}).to_string(), "2048 to 4096 bits"),
            (json!({"keys": [{"kty": "RSA", "n": rsa_n(513), "e": "AQAB"}]}).to_string(), "2048 to 4096 bits"),
            (json!({"keys": [{"kty": "RSA", "n": rsa_n(256), "e": "Aw"}]}).to_string(), "exponent must be 65537"),
            (json!({"keys": [{"kty": "RSA", "n": b64_of(&[0xC4; 256]), "e": "AQAB"}]}).to_string(), "invalid RSA key"),
            (json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]}).to_string(), "invalid EC key"),
            (json!({"keys": [{"kty": "OKP", "crv": "X25519", "x": "AAAA"}]}).to_string(), "unsupported OKP curve"),
            (json!({"keys": [{"kty": "oct", "alg": "none", "k": "AAAA"}]}).to_string(), "unsupported `alg`"),
            (json!({"keys": [{"kty": "oct", "k": "!!"}]}).to_string(), "not base64url"),
            (format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(MAX_JWKS_BYTES)), "more than"),
        ];
        for (doc, want) in cases {
            let err = parse_jwks(doc.as_bytes(), true).unwrap_err().0;
            assert!(err.contains(want), "{doc:.80}: {err}");
        }
    }

    #[test]
    fn hmac_keys_are_never_printed() {
        let parsed = parse_jwks(TestKeys::new().jwks().as_bytes(), true).unwrap();
        let printed = format!("{:?}", parsed.set);
        assert!(printed.contains("VerifyingKey(HS256)"));
        assert!(!printed.contains("AAECAwQ"), "{printed}");
    }
}
