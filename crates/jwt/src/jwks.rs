//! JSON Web Key Sets (RFC 7517), parsed once into ready-to-use verification keys.

use ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use jwt_simple::prelude::*;
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

/// A verification key for exactly one algorithm.
pub enum VerifyingKey {
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
}

impl std::fmt::Debug for VerifyingKey {
    /// Never prints key material (HMAC keys are secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({:?})", self.algorithm())
    }
}

impl VerifyingKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::HS256(_) => Algorithm::HS256,
            VerifyingKey::HS384(_) => Algorithm::HS384,
            VerifyingKey::HS512(_) => Algorithm::HS512,
            VerifyingKey::RS256(_) => Algorithm::RS256,
            VerifyingKey::RS384(_) => Algorithm::RS384,
            VerifyingKey::RS512(_) => Algorithm::RS512,
            VerifyingKey::PS256(_) => Algorithm::PS256,
            VerifyingKey::PS384(_) => Algorithm::PS384,
            VerifyingKey::PS512(_) => Algorithm::PS512,
            VerifyingKey::ES256(_) => Algorithm::ES256,
            VerifyingKey::ES384(_) => Algorithm::ES384,
            VerifyingKey::EdDSA(_) => Algorithm::EdDSA,
        }
    }

    /// Verifies signature and time claims (with `options`), returning jwt-simple's error.
    pub(crate) fn verify(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<NoCustomClaims>, jwt_simple::Error> {
        let o = Some(options);
        match self {
            VerifyingKey::HS256(k) => k.verify_token(token, o),
            VerifyingKey::HS384(k) => k.verify_token(token, o),
            VerifyingKey::HS512(k) => k.verify_token(token, o),
            VerifyingKey::RS256(k) => k.verify_token(token, o),
            VerifyingKey::RS384(k) => k.verify_token(token, o),
            VerifyingKey::RS512(k) => k.verify_token(token, o),
            VerifyingKey::PS256(k) => k.verify_token(token, o),
            VerifyingKey::PS384(k) => k.verify_token(token, o),
            VerifyingKey::PS512(k) => k.verify_token(token, o),
            VerifyingKey::ES256(k) => k.verify_token(token, o),
            VerifyingKey::ES384(k) => k.verify_token(token, o),
            VerifyingKey::EdDSA(k) => k.verify_token(token, o),
        }
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
                keys.push(match alg {
                    Algorithm::HS256 => VerifyingKey::HS256(HS256Key::from_bytes(&secret)),
                    Algorithm::HS384 => VerifyingKey::HS384(HS384Key::from_bytes(&secret)),
                    _ => VerifyingKey::HS512(HS512Key::from_bytes(&secret)),
                });
            }
        }
        "RSA" => {
            let n = b64("n", jwk.n.as_ref())?;
            let e = b64("e", jwk.e.as_ref())?;
            for alg in allowed(&Algorithm::RSA)? {
                let rsa = |r: Result<VerifyingKey, jwt_simple::Error>| {
                    r.map_err(|err| JwksError(format!("invalid RSA key: {err}")))
                };
                keys.push(rsa(match alg {
                    Algorithm::RS256 => RS256PublicKey::from_components(&n, &e).map(VerifyingKey::RS256),
                    Algorithm::RS384 => RS384PublicKey::from_components(&n, &e).map(VerifyingKey::RS384),
                    Algorithm::RS512 => RS512PublicKey::from_components(&n, &e).map(VerifyingKey::RS512),
                    Algorithm::PS256 => PS256PublicKey::from_components(&n, &e).map(VerifyingKey::PS256),
                    Algorithm::PS384 => PS384PublicKey::from_components(&n, &e).map(VerifyingKey::PS384),
                    _ => PS512PublicKey::from_components(&n, &e).map(VerifyingKey::PS512),
                })?);
            }
        }
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
                VerifyingKey::ES256(ES256PublicKey::from_bytes(&sec1).map_err(|_| bad("EC"))?)
            } else {
                VerifyingKey::ES384(ES384PublicKey::from_bytes(&sec1).map_err(|_| bad("EC"))?)
            });
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(JwksError(format!("unsupported OKP curve {:?}", jwk.crv)));
            }
            allowed(&[Algorithm::EdDSA])?;
            let x = b64("x", jwk.x.as_ref())?;
            keys.push(VerifyingKey::EdDSA(
                Ed25519PublicKey::from_bytes(&x).map_err(|_| bad("Ed25519"))?,
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
