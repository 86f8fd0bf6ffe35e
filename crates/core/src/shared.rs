//! Small per-key state shared by every worker of the sidecar, in proxy-wasm shared data.
//!
//! A [`SlotTable`] is a fixed set of shared-data keys (slots). An id hashes to one slot, which
//! holds at most [`ENTRIES_PER_SLOT`] entries `(fingerprint, value)`; a value at or before
//! `now` means "no state" and is dropped. Every update is a compare-and-swap, so workers racing
//! on one id serialize. Memory is bounded by the slot count. Used by webhook replay protection
//! (value = expiry) and rate limiting (value = GCRA theoretical arrival time).

use meshward_host::{Host, HostError};
use sha2::{Digest, Sha256};

/// Entries per slot (one shared-data value of at most 384 bytes).
pub const ENTRIES_PER_SLOT: usize = 16;
const FINGERPRINT_BYTES: usize = 16;
const ENTRY_BYTES: usize = FINGERPRINT_BYTES + 8;
const CAS_ATTEMPTS: usize = 16;

/// What to do when an id's slot is full of live entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the update ([`SlotError::Full`]): forgetting an entry would be unsafe.
    Refuse,
    /// Drop the entry closest to expiry to make room.
    EvictOldest,
}

/// Why an update did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError<E> {
    /// The update function refused (its own reason).
    Rejected(E),
    /// The slot is full of live entries and the table refuses to evict.
    Full,
    /// Shared data could not be written (proxy error or endless contention).
    Unavailable,
}

/// The outcome of an update that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated<T> {
    pub result: T,
    /// A live entry was evicted to make room.
    pub evicted: bool,
}

/// A bounded table of `slots` shared-data keys named `<prefix>/<slot>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    pub prefix: String,
    pub slots: usize,
}

type Entry = ([u8; FINGERPRINT_BYTES], u64);

fn decode(value: &[u8]) -> Vec<Entry> {
    value
        .chunks_exact(ENTRY_BYTES)
        .filter_map(|chunk| {
            let id: [u8; FINGERPRINT_BYTES] = chunk.get(..FINGERPRINT_BYTES)?.try_into().ok()?;
            let v = u64::from_be_bytes(chunk.get(FINGERPRINT_BYTES..)?.try_into().ok()?);
            Some((id, v))
        })
        .collect()
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for (id, v) in entries {
        out.extend_from_slice(id);
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

impl SlotTable {
    /// A table able to hold about `entries` live ids.
    pub fn new(prefix: impl Into<String>, entries: usize) -> Self {
        SlotTable { prefix: prefix.into(), slots: entries.div_ceil(ENTRIES_PER_SLOT).max(1) }
    }

    fn locate(&self, id: &str) -> ([u8; FINGERPRINT_BYTES], String) {
        let digest = Sha256::new().chain_update(self.prefix.as_bytes()).chain_update([0u8]).chain_update(id.as_bytes()).finalize();
        let mut fingerprint = [0u8; FINGERPRINT_BYTES];
        fingerprint.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
        let mut wide = [0u8; 8];
        wide.copy_from_slice(&digest[FINGERPRINT_BYTES..FINGERPRINT_BYTES + 8]);
        let slots = u64::try_from(self.slots).unwrap_or(1).max(1);
        let slot = u64::from_be_bytes(wide) % slots;
        (fingerprint, self.key(slot))
    }

    /// `<prefix>/<slot>`, built without the formatting machinery (once per request).
    fn key(&self, slot: u64) -> String {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = slot;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let mut key = String::with_capacity(self.prefix.len() + 1 + digits.len() - at);
        key.push_str(&self.prefix);
        key.push('/');
        key.extend(digits[at..].iter().map(|&d| char::from(d)));
        key
    }

    /// Creates every slot key, so that all later writes are compare-and-swap. Call when the
    /// configuration is applied, before traffic.
    pub fn create(&self, host: &mut dyn Host) {
        for slot in 0..self.slots {
            let key = self.key(u64::try_from(slot).unwrap_or(u64::MAX));
            if host.shared_data(&key).0.is_none() {
                let _ = host.set_shared_data(&key, &[], None);
            }
        }
    }

    /// The live value for `id`, if any (nothing is written).
    pub fn get(&self, host: &dyn Host, id: &str, now: u64) -> Option<u64> {
        let (fingerprint, key) = self.locate(id);
        let entries = decode(host.shared_data(&key).0.as_deref().unwrap_or_default());
        entries.into_iter().find(|(f, v)| *f == fingerprint && *v > now).map(|(_, v)| v)
    }

    /// Reads the live value for `id` (if any), lets `update` compute the new value, and writes
    /// it with compare-and-swap, retrying on contention. `update` returning `Err` writes nothing.
    pub fn update<T, E>(
        &self,
        host: &mut dyn Host,
        id: &str,
        now: u64,
        when_full: WhenFull,
        mut update: impl FnMut(Option<u64>) -> Result<(u64, T), E>,
    ) -> Result<Updated<T>, SlotError<E>> {
        let (fingerprint, key) = self.locate(id);
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = host.shared_data(&key);
            let mut entries = decode(value.as_deref().unwrap_or_default());
            entries.retain(|(_, v)| *v > now);
            let current = entries.iter().position(|(f, _)| *f == fingerprint);
            let (new_value, result) = update(current.map(|i| entries[i].1)).map_err(SlotError::Rejected)?;
            let mut evicted = false;
            match current {
                Some(i) => entries[i].1 = new_value,
                None => {
                    if entries.len() >= ENTRIES_PER_SLOT {
                        if when_full == WhenFull::Refuse {
                            return Err(SlotError::Full);
                        }
                        if let Some(oldest) = entries.iter().enumerate().min_by_key(|(_, (_, v))| *v).map(|(i, _)| i) {
                            entries.swap_remove(oldest);
                            evicted = true;
                        }
                    }
                    entries.push((fingerprint, new_value));
                }
            }
            match host.set_shared_data(&key, &encode(&entries), cas) {
                Ok(()) => return Ok(Updated { result, evicted }),
                Err(HostError::CasMismatch) => continue,
                Err(HostError::Refused(_)) => return Err(SlotError::Unavailable),
            }
        }
        Err(SlotError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshward_host::FakeHost;

    #[test]
    fn slot_keys_name_their_slot() {
        let table = SlotTable::new("meshward_ratelimit/per-user", 16);
        for slot in [0u64, 7, 10, 1234, u64::MAX] {
            assert_eq!(table.key(slot), format!("meshward_ratelimit/per-user/{slot}"));
        }
    }

    #[test]
    fn values_live_until_now_then_vanish() {
        let mut host = FakeHost::default();
        let table = SlotTable::new("t", 16);
        table.create(&mut host);
        let seen = |v: Option<u64>| -> Result<(u64, Option<u64>), ()> { Ok((100, v)) };
        assert_eq!(table.update(&mut host, "a", 10, WhenFull::Refuse, seen).unwrap().result, None);
        assert_eq!(table.update(&mut host, "a", 50, WhenFull::Refuse, seen).unwrap().result, Some(100));
        assert_eq!(table.update(&mut host, "a", 100, WhenFull::Refuse, seen).unwrap().result, None, "expired at 100");
        let refuse = |_: Option<u64>| -> Result<(u64, ()), &str> { Err("no") };
        assert_eq!(table.update(&mut host, "a", 10, WhenFull::Refuse, refuse), Err(SlotError::Rejected("no")));
    }

    #[test]
    fn get_reads_the_live_value_and_writes_nothing() {
        let mut host = FakeHost::default();
        let table = SlotTable::new("t", 16);
        table.create(&mut host);
        assert_eq!(table.get(&host, "a", 100), None);
        assert!(table.update(&mut host, "a", 100, WhenFull::Refuse, |_| Ok::<_, ()>((200, ()))).is_ok());
        assert_eq!(table.get(&host, "a", 100), Some(200));
        assert_eq!(table.get(&host, "b", 100), None);
        assert_eq!(table.get(&host, "a", 200), None, "gone once `now` reaches it");
    }

    #[test]
    fn full_slots_refuse_or_evict_the_oldest() {
        let mut host = FakeHost::default();
        let table = SlotTable::new("t", 1);
        for i in 0..ENTRIES_PER_SLOT {
            let v = 1000 + u64::try_from(i).unwrap();
            table.update(&mut host, &format!("id-{i}"), 0, WhenFull::Refuse, |_| Ok::<_, ()>((v, ()))).unwrap();
        }
        assert_eq!(table.update(&mut host, "new", 0, WhenFull::Refuse, |_| Ok::<_, ()>((5000, ()))), Err(SlotError::Full));
        let updated = table.update(&mut host, "new", 0, WhenFull::EvictOldest, |_| Ok::<_, ()>((5000, ()))).unwrap();
        assert!(updated.evicted);
        // id-0 (value 1000, the oldest) was the one dropped.
        let back = table.update(&mut host, "id-0", 0, WhenFull::EvictOldest, |v| Ok::<_, ()>((1, v))).unwrap();
        assert_eq!(back.result, None);
    }

    #[test]
    fn contention_is_retried_and_endless_contention_fails_closed() {
        let mut host = FakeHost::default();
        let table = SlotTable::new("t", 16);
        table.create(&mut host);
        host.cas_failures = 3;
        assert!(table.update(&mut host, "a", 0, WhenFull::Refuse, |_| Ok::<_, ()>((9, ()))).is_ok());
        host.cas_failures = 1000;
        assert_eq!(table.update(&mut host, "a", 0, WhenFull::Refuse, |_| Ok::<_, ()>((9, ()))), Err(SlotError::Unavailable));
    }
}
