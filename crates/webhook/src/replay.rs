//! Replay protection shared by every worker of the sidecar.
//!
//! Delivery ids live in a [`SlotTable`] per endpoint until their expiry. A slot full of live
//! ids refuses new deliveries (fail closed) rather than forgetting one that might be replayed.

use meshward_core::shared::{SlotError, SlotTable, WhenFull};
use meshward_host::Host;

use crate::config::Endpoint;
use crate::WebhookError;

fn table(endpoint: &Endpoint) -> SlotTable {
    SlotTable::new(format!("meshward_webhook/{}", endpoint.name), endpoint.replay_cache_entries)
}

/// Creates the endpoint's replay cache before traffic, so updates are always compare-and-swap.
pub fn create_buckets(host: &mut dyn Host, endpoint: &Endpoint) {
    if endpoint.replay_protection {
        table(endpoint).create(host);
    }
}

/// Records `id` as seen until `expires_at`, or says it was already seen.
pub fn check_and_remember(host: &mut dyn Host, endpoint: &Endpoint, id: &str, expires_at: u64, now: u64) -> Result<(), WebhookError> {
    let first_time = |seen: Option<u64>| if seen.is_some() { Err(()) } else { Ok((expires_at, ())) };
    match table(endpoint).update(host, id, now, WhenFull::Refuse, first_time) {
        Ok(_) => Ok(()),
        Err(SlotError::Rejected(())) => Err(WebhookError::Replayed),
        Err(SlotError::Full) => Err(WebhookError::ReplayCacheFull),
        Err(SlotError::Unavailable) => Err(WebhookError::ReplayCheckFailed),
    }
}
