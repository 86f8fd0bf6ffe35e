//! Is this delivery signed by the sender, and fresh? Headers are checked before the body is
//! buffered ([`check_headers`]); the signature over the raw body after ([`verify_signature`]).

use ct_codecs::{Base64, Decoder, Hex};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};

use crate::config::{Endpoint, HmacAlgorithm, Part, Scheme, Secret, SignatureEncoding};
use crate::WebhookError;

/// One signature found in the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    HmacSha256(Vec<u8>),
    HmacSha512(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// What the headers say about a delivery: enough to verify the body and check for replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub signatures: Vec<Signature>,
    /// Signed content before and after the raw body.
    pub prefix: Vec<u8>,
    pub suffix: Vec<u8>,
    /// The delivery id, only when the signature covers it (Standard Webhooks, a generic scheme
    /// signing `{id}`): the replay key. Otherwise the key is the digest of the signed content.
    pub signed_id: Option<String>,
    /// Unix seconds the sender signed at, when the scheme carries it.
    pub timestamp: Option<i64>,
}

fn within_window(timestamp: &str, now: u64, tolerance: u64) -> Result<i64, WebhookError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| WebhookError::TimestampOutOfWindow)?;
    let now = i64::try_from(now).map_err(|_| WebhookError::TimestampOutOfWindow)?;
    let tolerance = i64::try_from(tolerance).map_err(|_| WebhookError::TimestampOutOfWindow)?;
    if ts.checked_sub(now).is_none_or(|d| d.abs() > tolerance) {
        return Err(WebhookError::TimestampOutOfWindow);
    }
    Ok(ts)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    Hex::decode_to_vec(text, None).ok()
}

/// Checks the signature headers and the timestamp window, before any body is read.
pub fn check_headers(endpoint: &Endpoint, header: &dyn Fn(&str) -> Option<String>, now: u64) -> Result<Delivery, WebhookError> {
    let tolerance = endpoint.tolerance_seconds;
    match &endpoint.scheme {
        Scheme::StandardWebhooks => {
            // The svix-* names are the same scheme under its original vendor's prefix.
            let family = if header("webhook-signature").is_some() { "webhook" } else { "svix" };
            let get = |name: &str| header(&format!("{family}-{name}"));
            let (Some(id), Some(ts), Some(sigs)) = (get("id"), get("timestamp"), get("signature")) else {
                return Err(WebhookError::MissingSignature);
            };
            let timestamp = within_window(&ts, now, tolerance)?;
            let signatures: Vec<Signature> = sigs
                .split(' ')
                .filter_map(|entry| {
                    let (version, value) = entry.split_once(',')?;
                    let bytes = Base64::decode_to_vec(value, None).ok()?;
                    match version {
                        "v1" => Some(Signature::HmacSha256(bytes)),
                        "v1a" => Some(Signature::Ed25519(bytes)),
                        _ => None, // unknown versions are skipped, as the spec says
                    }
                })
                .collect();
            if signatures.is_empty() {
                return Err(WebhookError::BadSignature);
            }
            Ok(Delivery {
                signatures,
                prefix: format!("{id}.{}.", ts.trim()).into_bytes(),
                suffix: Vec::new(),
                signed_id: Some(id),
                timestamp: Some(timestamp),
            })
        }
        Scheme::Stripe => {
            let value = header("stripe-signature").ok_or(WebhookError::MissingSignature)?;
            let mut t = None;
            let mut signatures = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", v)) if t.is_none() => t = Some(v.to_string()),
                    Some(("v1", v)) => signatures.extend(decode_hex(v).map(Signature::HmacSha256)),
                    _ => {}
                }
            }
            let Some(t) = t.filter(|_| !signatures.is_empty()) else {
                return Err(WebhookError::BadSignature);
            };
            let timestamp = within_window(&t, now, tolerance)?;
            // The event id is inside the body, not in a header: the signed content is the key.
            Ok(Delivery { signatures, prefix: format!("{t}.").into_bytes(), suffix: Vec::new(), signed_id: None, timestamp: Some(timestamp) })
        }
        Scheme::Github => {
            let value = header("x-hub-signature-256").ok_or(WebhookError::MissingSignature)?;
            let bytes = value
                .strip_prefix("sha256=")
                .and_then(decode_hex)
                .ok_or(WebhookError::BadSignature)?;
            // X-GitHub-Delivery is not signed (anyone can send a fresh one): the body is the key.
            Ok(Delivery { signatures: vec![Signature::HmacSha256(bytes)], prefix: Vec::new(), suffix: Vec::new(), signed_id: None, timestamp: None })
        }
        Scheme::Hmac(h) => {
            let value = header(&h.signature_header).ok_or(WebhookError::MissingSignature)?;
            let encoded = value.strip_prefix(h.value_prefix.as_str()).ok_or(WebhookError::BadSignature)?;
            let bytes = match h.encoding {
                SignatureEncoding::Hex => decode_hex(encoded),
                SignatureEncoding::Base64 => Base64::decode_to_vec(encoded, None).ok(),
            }
            .ok_or(WebhookError::BadSignature)?;
            let signature = match h.algorithm {
                HmacAlgorithm::Sha256 => Signature::HmacSha256(bytes),
                HmacAlgorithm::Sha512 => Signature::HmacSha512(bytes),
            };
            let (ts_text, timestamp) = match &h.timestamp_header {
                Some(name) => {
                    let text = header(name).ok_or(WebhookError::MissingSignature)?;
                    let ts = within_window(&text, now, tolerance)?;
                    (Some(text), Some(ts))
                }
                None => (None, None),
            };
            let id = match &h.id_header {
                Some(name) => Some(header(name).ok_or(WebhookError::MissingDeliveryId)?),
                None => None,
            };
            let mut prefix = Vec::new();
            let mut suffix = Vec::new();
            let mut after_body = false;
            for part in &h.signed_content {
                let out = if after_body { &mut suffix } else { &mut prefix };
                match part {
                    Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
                    Part::Timestamp => out.extend_from_slice(ts_text.as_deref().unwrap_or("").trim().as_bytes()),
                    Part::Id => out.extend_from_slice(id.as_deref().unwrap_or("").as_bytes()),
                    Part::Body => after_body = true,
                }
            }
            // An id header the signature does not cover cannot be the replay key.
            let signed_id = if h.signed_content.contains(&Part::Id) { id } else { None };
            Ok(Delivery { signatures: vec![signature], prefix, suffix, signed_id, timestamp })
        }
    }
}

/// The replay key of a verified delivery, from signed material only: the signed id, or the
/// digest of everything the signature covers (so a fresh unsigned header, another encoding or
/// order of the same signatures, or an added bogus signature, is still the same delivery).
/// Hex SHA-256, one length whatever the input.
pub fn replay_key(delivery: &Delivery, body: &[u8]) -> String {
    let mut digest = Sha256::new();
    match &delivery.signed_id {
        Some(id) => {
            digest.update(b"id\0");
            digest.update(id.as_bytes());
        }
        None => {
            digest.update(b"signed\0");
            digest.update(&delivery.prefix);
            digest.update(body);
            digest.update(&delivery.suffix);
        }
    }
    meshward_core::hex::encode(&digest.finalize())
}

fn hmac_matches<M: Mac + KeyInit + Clone>(key: &[u8], delivery: &Delivery, body: &[u8], candidates: &[&Vec<u8>]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(&delivery.prefix);
    mac.update(body);
    mac.update(&delivery.suffix);
    // verify_slice compares in constant time.
    candidates.iter().any(|sig| mac.clone().verify_slice(sig).is_ok())
}

/// Verifies the signatures over the raw body: any signature with any secret (rotation).
pub fn verify_signature(endpoint: &Endpoint, delivery: &Delivery, body: &[u8]) -> Result<(), WebhookError> {
    let sha256: Vec<&Vec<u8>> = delivery.signatures.iter().filter_map(|s| match s { Signature::HmacSha256(b) => Some(b), _ => None }).collect();
    let sha512: Vec<&Vec<u8>> = delivery.signatures.iter().filter_map(|s| match s { Signature::HmacSha512(b) => Some(b), _ => None }).collect();
    let ed25519: Vec<&Vec<u8>> = delivery.signatures.iter().filter_map(|s| match s { Signature::Ed25519(b) => Some(b), _ => None }).collect();
    for secret in &endpoint.secrets {
        let ok = match secret {
            Secret::Hmac(key) => {
                (!sha256.is_empty() && hmac_matches::<Hmac<Sha256>>(key, delivery, body, &sha256))
                    || (!sha512.is_empty() && hmac_matches::<Hmac<Sha512>>(key, delivery, body, &sha512))
            }
            Secret::Ed25519(key) => !ed25519.is_empty() && {
                let mut message = Vec::with_capacity(delivery.prefix.len() + body.len() + delivery.suffix.len());
                message.extend_from_slice(&delivery.prefix);
                message.extend_from_slice(body);
                message.extend_from_slice(&delivery.suffix);
                let public = ed25519_compact::PublicKey::new(*key);
                ed25519.iter().any(|sig| {
                    ed25519_compact::Signature::from_slice(sig).is_ok_and(|s| public.verify(&message, &s).is_ok())
                })
            },
        };
        if ok {
            return Ok(());
        }
    }
    Err(WebhookError::BadSignature)
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
