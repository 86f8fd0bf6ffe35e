//! Replay protection shared by every worker of the sidecar, in proxy-wasm shared data.
//!
//! Each endpoint's cache is a fixed set of shared-data keys (buckets); a delivery id hashes to
//! one bucket, which holds at most [`SLOTS_PER_BUCKET`] live ids with their expiry. Updates are
//! compare-and-swap, so two workers racing on the same delivery cannot both accept it. Memory is
//! bounded by configuration; a bucket full of live ids refuses new deliveries (fail closed)
//! rather than forgetting one that might be replayed.

use meshward_host::{Host, HostError};
use sha2::{Digest, Sha256};

use crate::config::{Endpoint, SLOTS_PER_BUCKET};
use crate::WebhookError;

const ID_BYTES: usize = 16;
const ENTRY_BYTES: usize = ID_BYTES + 8;
const CAS_ATTEMPTS: usize = 16;

fn bucket_key(endpoint: &str, bucket: usize) -> String {
    format!("meshward_webhook/{endpoint}/{bucket}")
}

/// Creates the endpoint's buckets so that later updates are always compare-and-swap.
/// Called when the configuration is applied, before traffic.
pub fn create_buckets(host: &mut dyn Host, endpoint: &Endpoint) {
    if !endpoint.replay_protection {
        return;
    }
    for bucket in 0..endpoint.replay_buckets {
        let key = bucket_key(&endpoint.name, bucket);
        if host.shared_data(&key).0.is_none() {
            let _ = host.set_shared_data(&key, &[], None);
        }
    }
}

fn decode(value: &[u8]) -> Vec<([u8; ID_BYTES], u64)> {
    value
        .chunks_exact(ENTRY_BYTES)
        .filter_map(|chunk| {
            let id: [u8; ID_BYTES] = chunk.get(..ID_BYTES)?.try_into().ok()?;
            let expiry = u64::from_be_bytes(chunk.get(ID_BYTES..)?.try_into().ok()?);
            Some((id, expiry))
        })
        .collect()
}

fn encode(entries: &[([u8; ID_BYTES], u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for (id, expiry) in entries {
        out.extend_from_slice(id);
        out.extend_from_slice(&expiry.to_be_bytes());
    }
    out
}

/// Records `id` as seen until `expires_at`, or says it was already seen.
pub fn check_and_remember(host: &mut dyn Host, endpoint: &Endpoint, id: &str, expires_at: u64, now: u64) -> Result<(), WebhookError> {
    let digest = Sha256::new()
        .chain_update(endpoint.name.as_bytes())
        .chain_update([0u8])
        .chain_update(id.as_bytes())
        .finalize();
    let mut fingerprint = [0u8; ID_BYTES];
    fingerprint.copy_from_slice(&digest[..ID_BYTES]);
    let mut bucket_bytes = [0u8; 8];
    bucket_bytes.copy_from_slice(&digest[ID_BYTES..ID_BYTES + 8]);
    let buckets = u64::try_from(endpoint.replay_buckets.max(1)).unwrap_or(1);
    let bucket = usize::try_from(u64::from_be_bytes(bucket_bytes) % buckets).unwrap_or(0);
    let key = bucket_key(&endpoint.name, bucket);

    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = host.shared_data(&key);
        let mut entries = decode(value.as_deref().unwrap_or_default());
        entries.retain(|(_, expiry)| *expiry > now);
        if entries.iter().any(|(seen, _)| *seen == fingerprint) {
            return Err(WebhookError::Replayed);
        }
        if entries.len() >= SLOTS_PER_BUCKET {
            return Err(WebhookError::ReplayCacheFull);
        }
        entries.push((fingerprint, expires_at));
        match host.set_shared_data(&key, &encode(&entries), cas) {
            Ok(()) => return Ok(()),
            Err(HostError::CasMismatch) => continue,
            Err(HostError::Refused(_)) => return Err(WebhookError::ReplayCheckFailed),
        }
    }
    Err(WebhookError::ReplayCheckFailed)
}
