//! A provider's remote key set as every worker of the sidecar sees it, in proxy-wasm shared data
//! (one `vm_id` per module, so every worker VM of the JWT module reads the same record).
//!
//! One worker fetches, all use the result: a scheduled fetch is taken as a lease, so a sidecar
//! fetches once per `cache_duration` however many workers it runs; on-demand fetches (an
//! unknown `kid`) are bounded per sidecar; a key set one worker fetched is installed by the
//! others on their next tick, or at once when a request needs it. A lease whose worker died
//! expires. The record outlives configuration updates, so a new configuration starts with the
//! keys already fetched.

use meshward_host::{Host, HostError};
use sha2::{Digest, Sha256};

const FORMAT: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 * 4 + 4;
const CAS_ATTEMPTS: usize = 16;

/// The shared state of one provider's remote key set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksRecord {
    /// Bumped on every published key set: a worker installs a record it has not seen.
    pub sequence: u64,
    /// When the next scheduled fetch is due (unix seconds).
    pub next_fetch_at: u64,
    /// A worker is fetching until then; nobody else starts a scheduled fetch.
    pub lease_until: u64,
    /// The last on-demand fetch, for the sidecar-wide bound on them.
    pub last_on_demand_at: u64,
    /// Scheduled fetches failed in a row (for the retry backoff).
    pub failures: u32,
    /// The JWKS document last fetched and accepted; empty before the first.
    pub jwks: Vec<u8>,
}

impl JwksRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.jwks.len());
        out.push(FORMAT);
        for v in [self.sequence, self.next_fetch_at, self.lease_until, self.last_on_demand_at] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.failures.to_be_bytes());
        out.extend_from_slice(&self.jwks);
        out
    }

    /// `None` for anything that is not a record of this format (then it is rewritten whole).
    fn decode(bytes: &[u8]) -> Option<JwksRecord> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT {
            return None;
        }
        let u64_at = |i: usize| Some(u64::from_be_bytes(rest.get(i * 8..i * 8 + 8)?.try_into().ok()?));
        Some(JwksRecord {
            sequence: u64_at(0)?,
            next_fetch_at: u64_at(1)?,
            lease_until: u64_at(2)?,
            last_on_demand_at: u64_at(3)?,
            failures: u32::from_be_bytes(rest.get(32..36)?.try_into().ok()?),
            jwks: rest.get(36..)?.to_vec(),
        })
    }
}

/// Why the record could not be updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareError {
    /// Shared data could not be written (proxy error or endless contention).
    Unavailable,
}

/// The shared-data key of one provider's key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedJwks {
    key: String,
}

impl SharedJwks {
    /// Keyed by provider and URI: providers never share a record, a changed URI starts afresh.
    pub fn new(provider: &str, uri: &str) -> SharedJwks {
        let digest = Sha256::digest(uri.as_bytes());
        let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        SharedJwks { key: format!("meshward.jwt.jwks/{provider}/{tag}") }
    }

    /// The record as it is now (an empty one when there is none yet).
    pub fn read(&self, host: &dyn Host) -> JwksRecord {
        host.shared_data(&self.key).0.as_deref().and_then(JwksRecord::decode).unwrap_or_default()
    }

    /// Creates the record if it does not exist, so later updates are compare-and-swap.
    pub fn create(&self, host: &mut dyn Host) {
        if host.shared_data(&self.key).0.is_none() {
            let _ = host.set_shared_data(&self.key, &JwksRecord::default().encode(), None);
        }
    }

    /// Lets `change` edit the record and writes it with compare-and-swap, retrying on
    /// contention; `change` returning `None` writes nothing. Returns what `change` returned.
    pub fn update<T>(&self, host: &mut dyn Host, mut change: impl FnMut(&mut JwksRecord) -> Option<T>) -> Result<Option<T>, ShareError> {
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = host.shared_data(&self.key);
            let mut record = bytes.as_deref().and_then(JwksRecord::decode).unwrap_or_default();
            let Some(result) = change(&mut record) else { return Ok(None) };
            match host.set_shared_data(&self.key, &record.encode(), cas) {
                Ok(()) => return Ok(Some(result)),
                Err(HostError::CasMismatch) => continue,
                Err(HostError::Refused(_)) => return Err(ShareError::Unavailable),
            }
        }
        Err(ShareError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshward_host::FakeHost;

    #[test]
    fn records_round_trip_and_garbage_reads_as_empty() {
        let r = JwksRecord { sequence: 3, next_fetch_at: 100, lease_until: 7, last_on_demand_at: 9, failures: 2, jwks: b"{\"keys\":[]}".to_vec() };
        assert_eq!(JwksRecord::decode(&r.encode()), Some(r));
        assert_eq!(JwksRecord::decode(b""), None);
        assert_eq!(JwksRecord::decode(&[2; 40]), None, "another format");
        assert_eq!(JwksRecord::decode(&[1; 20]), None, "cut short");
        let mut host = FakeHost::default();
        let shared = SharedJwks::new("idp", "https://idp/jwks");
        host.set_shared_data("meshward.jwt.jwks/idp/x", b"junk", None).unwrap();
        assert_eq!(shared.read(&host), JwksRecord::default());
    }

    #[test]
    fn updates_are_compare_and_swap_and_give_up_closed() {
        let mut host = FakeHost::default();
        let shared = SharedJwks::new("idp", "https://idp/jwks");
        shared.create(&mut host);
        host.cas_failures = 3;
        assert_eq!(shared.update(&mut host, |r| { r.sequence += 1; Some(r.sequence) }), Ok(Some(1)));
        assert_eq!(shared.update(&mut host, |_| None::<()>), Ok(None));
        host.cas_failures = 1000;
        assert_eq!(shared.update(&mut host, |r| { r.sequence += 1; Some(()) }), Err(ShareError::Unavailable));
        assert_eq!(shared.read(&host).sequence, 1);
    }

    #[test]
    fn providers_and_uris_get_their_own_records() {
        assert_ne!(SharedJwks::new("a", "https://idp/jwks"), SharedJwks::new("b", "https://idp/jwks"));
        assert_ne!(SharedJwks::new("a", "https://idp/jwks"), SharedJwks::new("a", "https://idp/v2/jwks"));
    }
}
