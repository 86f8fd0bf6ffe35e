//! Replay protection in this sidecar, shared by its workers: a delivery is *claimed* while the
//! upstream handles it, then *settled*: remembered as seen when the upstream accepted it,
//! forgotten when it did not (the sender's retry must pass). A duplicate arriving meanwhile is
//! in flight. The fleet-wide seen-set (`meshward-fleet`) has the same two steps.
//!
//! Keys live in a [`SlotTable`] per endpoint. An entry's value is its expiry in unix µs, whose
//! lowest bit marks a claim still in flight. A slot full of live keys refuses new deliveries
//! (fail closed) rather than forgetting one that might be replayed.

use meshward_core::shared::{SlotError, SlotTable, WhenFull};
use meshward_host::Host;

use crate::config::Endpoint;
use crate::WebhookError;

const IN_FLIGHT: u64 = 1;
/// Microseconds in a second: the table keeps times in µs.
pub const MICROS: u64 = 1_000_000;

fn table(endpoint: &Endpoint) -> SlotTable {
    SlotTable::new(format!("meshward_webhook/{}", endpoint.name), endpoint.replay_cache_entries)
}

/// Creates the endpoint's replay cache before traffic, so updates are always compare-and-swap.
pub fn create_buckets(host: &mut dyn Host, endpoint: &Endpoint) {
    if endpoint.replay_protection {
        table(endpoint).create(host);
    }
}

fn slot_error(e: SlotError<WebhookError>) -> WebhookError {
    match e {
        SlotError::Rejected(e) => e,
        SlotError::Full => WebhookError::ReplayCacheFull,
        SlotError::Unavailable => WebhookError::ReplayCheckFailed,
    }
}

/// Claims `key` for `in_flight_seconds`; the returned value is what settles the claim.
pub fn claim(host: &mut dyn Host, endpoint: &Endpoint, key: &str, now_us: u64) -> Result<u64, WebhookError> {
    let held_until = now_us.saturating_add(endpoint.in_flight_seconds * MICROS) | IN_FLIGHT;
    let first_time = |current: Option<u64>| match current {
        None => Ok((held_until, ())),
        Some(v) if v & IN_FLIGHT != 0 => {
            Err(WebhookError::InFlight { retry_after_secs: (v & !IN_FLIGHT).saturating_sub(now_us).div_ceil(MICROS).max(1) })
        }
        Some(_) => Err(WebhookError::Replayed),
    };
    table(endpoint).update(host, key, now_us, WhenFull::Refuse, first_time).map(|_| held_until).map_err(slot_error)
}

/// Settles the claim `claimed` on `key`: seen until `seen_until_us` (`Some`), or forgotten.
/// `false` when the claim was no longer there (it expired; another delivery may hold the key).
pub fn settle(host: &mut dyn Host, endpoint: &Endpoint, key: &str, claimed: u64, seen_until_us: Option<u64>, now_us: u64) -> bool {
    // A value at or before now reads as absent: 0 forgets the key.
    let new_value = seen_until_us.map_or(0, |t| t.max(now_us + 1) & !IN_FLIGHT);
    let ours = |current: Option<u64>| if current == Some(claimed) { Ok((new_value, ())) } else { Err(WebhookError::ReplayCheckFailed) };
    table(endpoint).update(host, key, now_us, WhenFull::Refuse, ours).is_ok()
}

/// Remembers `key` as seen until `seen_until_us`, whatever it held (the fleet said it was seen).
pub fn remember(host: &mut dyn Host, endpoint: &Endpoint, key: &str, seen_until_us: u64, now_us: u64) {
    let value = seen_until_us.max(now_us + 2) & !IN_FLIGHT;
    let _ = table(endpoint).update(host, key, now_us, WhenFull::EvictOldest, |_| Ok::<_, ()>((value, ())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookConfig;
    use meshward_host::FakeHost;

    fn endpoint() -> Endpoint {
        let config = br#"{"endpoints": [{"name": "e", "match": {"prefix": "/"}, "scheme": "github",
            "secrets": [{"inline_string": "0123456789abcdef"}], "in_flight_seconds": 30}]}"#;
        WebhookConfig::parse(config, &|_| None).unwrap().endpoints.remove(0)
    }

    #[test]
    fn a_claim_is_in_flight_then_seen_or_forgotten() {
        let mut host = FakeHost::default();
        let e = endpoint();
        create_buckets(&mut host, &e);
        let t0 = 1_000 * MICROS;
        let claimed = claim(&mut host, &e, "k", t0).unwrap();
        // A duplicate meanwhile: in flight, retry after the rest of the hold.
        assert_eq!(claim(&mut host, &e, "k", t0 + 10 * MICROS), Err(WebhookError::InFlight { retry_after_secs: 20 }));
        // Refused by the upstream: forgotten, the redelivery claims anew.
        assert!(settle(&mut host, &e, "k", claimed, None, t0 + MICROS));
        let again = claim(&mut host, &e, "k", t0 + 2 * MICROS).unwrap();
        // Accepted: seen until the given time, a replay is refused, and then forgotten.
        assert!(settle(&mut host, &e, "k", again, Some(t0 + 100 * MICROS), t0 + 3 * MICROS));
        assert_eq!(claim(&mut host, &e, "k", t0 + 50 * MICROS), Err(WebhookError::Replayed));
        assert!(claim(&mut host, &e, "k", t0 + 101 * MICROS).is_ok());
    }

    #[test]
    fn an_expired_claim_is_not_settled_over_a_newer_one() {
        let mut host = FakeHost::default();
        let e = endpoint();
        create_buckets(&mut host, &e);
        let t0 = 1_000 * MICROS;
        let stale = claim(&mut host, &e, "k", t0).unwrap();
        // Never answered within the hold: a redelivery claims the key.
        let fresh = claim(&mut host, &e, "k", t0 + 31 * MICROS).unwrap();
        assert!(!settle(&mut host, &e, "k", stale, None, t0 + 32 * MICROS), "the stale claim releases nothing");
        assert_eq!(claim(&mut host, &e, "k", t0 + 33 * MICROS), Err(WebhookError::InFlight { retry_after_secs: 28 }));
        assert!(settle(&mut host, &e, "k", fresh, Some(t0 + 100 * MICROS), t0 + 34 * MICROS));
        remember(&mut host, &e, "other", t0 + 100 * MICROS, t0);
        assert_eq!(claim(&mut host, &e, "other", t0 + MICROS), Err(WebhookError::Replayed));
    }
}
