//! Outcomes the fleet engine did not confirm, kept by the sidecar until it does.
//!
//! When a settle fails (engine unreachable, Redis down), the claim stays in flight in the engine
//! for its whole window, so no other replica runs the request again. The outcome itself is kept
//! here, in shared data (every worker, and the VMs a policy push builds, see it), and sent again
//! from the tick with backoff until the engine answers (settles nobody waits for, such as a
//! release after the stream ended, are sent from the tick too, so their answer is read); meanwhile this sidecar answers copies from
//! it ([`UnsettledStore::lookup`]). A sidecar that stops with outcomes here leaves their keys in
//! flight until their windows end: safe, never run twice, but retries wait.
//!
//! Layout: an index (`<prefix>/unsettled`: slot, key, next attempt, attempts) and one shared-data
//! value per slot (`<prefix>/unsettled/<slot>`: the settle request), at most
//! [`MAX_UNSETTLED`] slots, reused, so shared data stays bounded. The index is updated by
//! compare-and-swap; a worker takes an entry by moving its next attempt forward first.

use std::cell::RefCell;
use std::collections::HashMap;

use meshward_host::{Host, HostError, LogLevel};
use prost::Message;

use crate::fleet::{settle_answer, FleetService, SettleAnswer, SettleRequest};
use crate::stats::{count, Counter};
use crate::GrpcResponse;

/// Outcomes one stage keeps at most; past that, an outcome is dropped (its key stays in flight
/// in the engine until its window ends), counted and logged.
pub const MAX_UNSETTLED: usize = 1024;
/// Entries sent again per tick per worker.
const RETRIES_PER_TICK: usize = 16;
const FIRST_RETRY_MS: u64 = 500;
/// The longest wait between two tries: the engine's recovery period (15 s by default) gives
/// every sidecar two tries at least.
const MAX_RETRY_MS: u64 = 5_000;
const CAS_ATTEMPTS: usize = 16;

#[derive(Clone, PartialEq, Message)]
struct Pending {
    #[prost(uint32, tag = "1")]
    slot: u32,
    /// The engine's key.
    #[prost(string, tag = "2")]
    key: String,
    #[prost(uint64, tag = "3")]
    next_attempt_ms: u64,
    #[prost(uint32, tag = "4")]
    attempts: u32,
    /// The claim's token: a key may have several outcomes waiting (an answer kept, then copies'
    /// claims abandoned).
    #[prost(string, tag = "5")]
    token: String,
}

#[derive(Clone, PartialEq, Message)]
struct Index {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<Pending>,
}

#[derive(Clone, PartialEq, Message)]
struct Kept {
    #[prost(message, optional, tag = "1")]
    request: Option<SettleRequest>,
    /// For a kept outcome: until when (unix ms) the key stays seen; `keep_ms` is what is left
    /// of it when the request is sent.
    #[prost(uint64, tag = "2")]
    keep_until_ms: u64,
    /// Kept because the engine did not confirm it (counted as a settle failure then): its
    /// landing is counted as recovered. Settles scheduled for the tick are not.
    #[prost(bool, tag = "3")]
    after_failure: bool,
}

/// Why an outcome could not be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepError {
    /// [`MAX_UNSETTLED`] outcomes are already waiting.
    Full,
    /// Shared data refused the write.
    Unavailable,
}

impl std::fmt::Display for KeepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepError::Full => write!(f, "{MAX_UNSETTLED} outcomes already wait for the engine"),
            KeepError::Unavailable => f.write_str("shared data refused the write"),
        }
    }
}

/// One stage's unsettled outcomes (`prefix`: `meshward_fleet/<stage>`), and the retries this
/// VM has in flight.
#[derive(Debug)]
pub struct UnsettledStore {
    prefix: String,
    /// Stage name for log lines.
    stage: &'static str,
    /// Settle calls this VM sent from the tick: call token → (slot, key, claim token).
    sent: RefCell<HashMap<u32, (u32, String, String)>>,
}

fn backoff_ms(attempts: u32) -> u64 {
    FIRST_RETRY_MS.saturating_mul(1 << attempts.min(6)).min(MAX_RETRY_MS)
}

impl UnsettledStore {
    pub fn new(stage: &'static str) -> Self {
        UnsettledStore { prefix: format!("meshward_fleet/{stage}"), stage, sent: RefCell::new(HashMap::new()) }
    }

    fn index_key(&self) -> String {
        format!("{}/unsettled", self.prefix)
    }

    fn slot_key(&self, slot: u32) -> String {
        format!("{}/unsettled/{slot}", self.prefix)
    }

    fn read_index(&self, host: &dyn Host) -> (Index, Option<u32>) {
        let (value, cas) = host.shared_data(&self.index_key());
        (value.and_then(|v| Index::decode(v.as_slice()).ok()).unwrap_or_default(), cas)
    }

    /// Changes the index by compare-and-swap; `change` returns what to hand back, or `None` to
    /// leave the index as it is.
    fn update_index<T>(&self, host: &mut dyn Host, mut change: impl FnMut(&mut Index) -> Option<T>) -> Result<Option<T>, HostError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut index, cas) = self.read_index(host);
            let Some(result) = change(&mut index) else { return Ok(None) };
            match host.set_shared_data(&self.index_key(), &index.encode_to_vec(), cas) {
                Ok(()) => return Ok(Some(result)),
                Err(HostError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(HostError::CasMismatch)
    }

    fn read_slot(&self, host: &dyn Host, slot: u32, key: &str, token: &str) -> Option<Kept> {
        let value = host.shared_data(&self.slot_key(slot)).0?;
        let kept = Kept::decode(value.as_slice()).ok()?;
        kept.request.as_ref().is_some_and(|r| r.key == key && r.token == token).then_some(kept)
    }

    /// Keeps an outcome for the engine; the next tick sends it, and the ones after it again until
    /// the engine answers.
    /// `keep_until_ms`: for a kept outcome, until when the key stays seen.
    pub fn keep(&self, host: &mut dyn Host, request: SettleRequest, keep_until_ms: u64, now_ms: u64) -> Result<(), KeepError> {
        self.keep_entry(host, request, keep_until_ms, false, now_ms)
    }

    /// [`UnsettledStore::keep`]; `after_failure`: a settle the engine did not confirm (its
    /// landing is counted as recovered).
    fn keep_entry(&self, host: &mut dyn Host, request: SettleRequest, keep_until_ms: u64, after_failure: bool, now_ms: u64) -> Result<(), KeepError> {
        let (key, token) = (request.key.clone(), request.token.clone());
        let reserved = self.update_index(host, |index| {
            index.entries.retain(|e| !(e.key == key && e.token == token));
            let slot = (0..MAX_UNSETTLED as u32).find(|s| index.entries.iter().all(|e| e.slot != *s))?;
            index.entries.push(Pending { slot, key: key.clone(), next_attempt_ms: now_ms, attempts: 0, token: token.clone() });
            Some(slot)
        });
        let slot = match reserved {
            Ok(Some(slot)) => slot,
            Ok(None) => return Err(KeepError::Full),
            Err(_) => return Err(KeepError::Unavailable),
        };
        let kept = Kept { request: Some(request), keep_until_ms, after_failure };
        host.set_shared_data(&self.slot_key(slot), &kept.encode_to_vec(), None).map_err(|_| KeepError::Unavailable)
    }

    /// The answer this sidecar keeps for the engine's `key` (a kept outcome), if any.
    pub fn lookup(&self, host: &dyn Host, key: &str) -> Option<SettleRequest> {
        let (index, _) = self.read_index(host);
        index
            .entries
            .iter()
            .filter(|e| e.key == key)
            .filter_map(|e| self.read_slot(host, e.slot, key, &e.token)?.request)
            .find(|r| r.accepted)
    }

    /// How many outcomes wait for the engine.
    pub fn len(&self, host: &dyn Host) -> usize {
        self.read_index(host).0.entries.len()
    }

    pub fn is_empty(&self, host: &dyn Host) -> bool {
        self.len(host) == 0
    }

    fn remove(&self, host: &mut dyn Host, slot: u32, key: &str, token: &str) {
        let removed = self.update_index(host, |index| {
            let before = index.entries.len();
            index.entries.retain(|e| !(e.slot == slot && e.key == key && e.token == token));
            (index.entries.len() != before).then_some(())
        });
        if matches!(removed, Ok(Some(()))) {
            let _ = host.set_shared_data(&self.slot_key(slot), b"", None);
        }
    }

    /// On the tick: sends again the outcomes whose next attempt is due (each taken by one
    /// worker), with backoff.
    pub fn retry(&self, host: &mut dyn Host, fleet: &FleetService, now_ms: u64) {
        let taken = self.update_index(host, |index| {
            let mut taken = Vec::new();
            for entry in index.entries.iter_mut().filter(|e| e.next_attempt_ms <= now_ms).take(RETRIES_PER_TICK) {
                entry.attempts = entry.attempts.saturating_add(1);
                entry.next_attempt_ms = now_ms + backoff_ms(entry.attempts);
                taken.push((entry.slot, entry.key.clone(), entry.token.clone()));
            }
            (!taken.is_empty()).then_some(taken)
        });
        let Ok(Some(taken)) = taken else { return };
        for (slot, key, token) in taken {
            // Not written yet (a worker is between reserving the slot and writing it): later.
            let Some(Kept { request: Some(mut request), keep_until_ms, .. }) = self.read_slot(host, slot, &key, &token) else { continue };
            if request.accepted {
                if keep_until_ms <= now_ms {
                    // The window is over: nothing is left to protect.
                    self.remove(host, slot, &key, &token);
                    continue;
                }
                request.keep_ms = keep_until_ms - now_ms;
            }
            match fleet.send_settle(host, &request) {
                Ok(call) => {
                    self.sent.borrow_mut().insert(call, (slot, key, token));
                }
                Err(e) => host.log(LogLevel::Debug, &format!("meshward_{}: cannot send a kept outcome again: {e}", self.stage)),
            }
        }
    }

    /// The engine's answer to a call [`UnsettledStore::retry`] sent; `false` when `token` is
    /// not one of them.
    pub fn on_answer(&self, host: &mut dyn Host, token: u32, response: &GrpcResponse) -> bool {
        let Some((slot, key, claim)) = self.sent.borrow_mut().remove(&token) else { return false };
        let answer = settle_answer(response);
        if answer == SettleAnswer::Failed {
            host.log(LogLevel::Debug, &format!("meshward_{}: the fleet engine still does not answer (grpc status {})", self.stage, response.status));
            return true;
        }
        // Settled or not ours any more: either way it is done here.
        let kept = self.read_slot(host, slot, &key, &claim);
        self.remove(host, slot, &key, &claim);
        if answer == SettleAnswer::Conflict {
            settle_conflict(host, self.stage, kept.as_ref().and_then(|k| k.request.as_ref()));
        } else if kept.is_some_and(|k| k.after_failure) {
            count(host, Counter::FleetSettlesRecovered);
            host.log(LogLevel::Info, &format!("meshward_{}: a kept outcome reached the fleet engine", self.stage));
        }
        true
    }
}

/// A settle nobody waits for (the stream has ended, or its answer is on its way): kept for the
/// tick to send, again until the engine has it. When it cannot be kept, counted and logged: the
/// key stays in flight until its window ends.
pub fn settle_from_tick(host: &mut dyn Host, store: &UnsettledStore, request: SettleRequest, keep_until_ms: u64) {
    keep_or_count_lost(host, store, request, keep_until_ms, false, "a claim is to be settled from the tick");
}

/// Keeps `request` for the tick; when it cannot be, counts it lost and logs why (`what`: what
/// happened, for the log line). `true` when it is kept.
fn keep_or_count_lost(host: &mut dyn Host, store: &UnsettledStore, request: SettleRequest, keep_until_ms: u64, after_failure: bool, what: &str) -> bool {
    let now_ms = crate::clock::unix_millis(host);
    let Err(e) = store.keep_entry(host, request, keep_until_ms, after_failure, now_ms) else { return true };
    count(host, Counter::FleetSettlesLost);
    host.log(LogLevel::Error, &format!("meshward_{}: {what}; it cannot be kept ({e}): its key stays in flight until its window ends", store.stage));
    false
}

/// The engine's answer to a settle a stage waited for (`settling`: the request and until when
/// its outcome is kept): a conflict is counted and logged, a failure kept for the tick
/// ([`settle_failed`], counted as `failures`). Returns what the engine answered.
pub fn settle_answered(
    host: &mut dyn Host,
    store: &UnsettledStore,
    failures: Counter,
    settling: Option<(SettleRequest, u64)>,
    response: &GrpcResponse,
) -> SettleAnswer {
    let answer = settle_answer(response);
    match (answer, settling) {
        (SettleAnswer::Conflict, settling) => settle_conflict(host, store.stage, settling.as_ref().map(|(r, _)| r)),
        (SettleAnswer::Failed, Some((request, keep_until_ms))) => {
            settle_failed(host, store, failures, request, keep_until_ms, &format!("grpc status {}", response.status));
        }
        _ => {}
    }
    answer
}

/// The engine holds the key for another claim: this request's outcome cannot be recorded, and
/// the request may run again. Counted and logged as an error.
fn settle_conflict(host: &mut dyn Host, stage: &str, request: Option<&SettleRequest>) {
    count(host, Counter::FleetSettleConflicts);
    let (key, outcome) = request.map_or(("?", 0), |r| (r.key.as_str(), r.outcome));
    host.log(
        LogLevel::Error,
        &format!("meshward_{stage}: the fleet engine holds key {key} for another claim; this claim's outcome ({outcome}) was not recorded (did Redis lose data?)"),
    );
}

/// A settle the engine did not confirm: the outcome is kept for the tick to send again, or,
/// when it cannot be, dropped (its key stays in flight until its window ends). Counted once
/// (`failures`) and logged once.
pub fn settle_failed(
    host: &mut dyn Host,
    store: &UnsettledStore,
    failures: Counter,
    request: SettleRequest,
    keep_until_ms: u64,
    why: &str,
) {
    count(host, failures);
    let what = format!("the fleet engine did not record an outcome ({why})");
    if keep_or_count_lost(host, store, request, keep_until_ms, true, &what) {
        host.log(LogLevel::Warn, &format!("meshward_{}: {what}; kept here and sent again until it does", store.stage));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{FailureMode, Settlement, SettleResponse};
    use meshward_host::FakeHost;
    use std::time::Duration;

    fn fleet() -> FleetService {
        FleetService { cluster: "fleet".into(), namespace: "ns".into(), timeout: Duration::from_secs(1), failure_mode: FailureMode::Deny }
    }

    fn keep_request(fleet: &FleetService, key: &str) -> SettleRequest {
        fleet.settle_request(key, "t1", "fp", Settlement::Keep { keep: Duration::from_secs(60), record: b"answer".to_vec() })
    }

    fn answer(status: u32, settled: bool) -> GrpcResponse {
        GrpcResponse { status, message: if status == 0 { SettleResponse { settled }.encode_to_vec() } else { Vec::new() } }
    }

    #[test]
    fn a_kept_outcome_is_sent_again_with_backoff_until_the_engine_records_it() {
        let mut host = FakeHost::default();
        let store = UnsettledStore::new("idempotency");
        let fleet = fleet();
        let t0 = 1_000_000;
        host.now = std::time::UNIX_EPOCH + Duration::from_millis(t0);
        settle_failed(&mut host, &store, Counter::IdempotencySettleFailures, keep_request(&fleet, "k"), t0 + 60_000, "grpc status 14");
        assert_eq!(host.counter(Counter::IdempotencySettleFailures.name()), 1);
        assert_eq!(store.lookup(&host, "ns/k").map(|r| r.record), Some(b"answer".to_vec()));
        assert_eq!(store.lookup(&host, "ns/other"), None);
        // Not due before it was kept.
        store.retry(&mut host, &fleet, t0 - 1);
        assert!(host.grpc_calls.is_empty());
        // Sent on the next tick with what is left of the keep.
        store.retry(&mut host, &fleet, t0 + 1_000);
        assert_eq!(host.grpc_calls.len(), 1);
        let (token, cluster, method, message) = host.grpc_calls[0].clone();
        assert_eq!((cluster.as_str(), method.as_str()), ("fleet", "meshward.fleet.v1.SeenSet/Settle"));
        let sent = SettleRequest::decode(message.as_slice()).unwrap();
        assert_eq!((sent.key.as_str(), sent.token.as_str(), sent.keep_ms, sent.fingerprint.as_str()), ("ns/k", "t1", 59_000, "fp"));
        // Still down: kept, sent again only after the backoff (1 s after the first retry).
        assert!(store.on_answer(&mut host, token, &answer(14, false)));
        store.retry(&mut host, &fleet, t0 + 1_500);
        assert_eq!(host.grpc_calls.len(), 1);
        store.retry(&mut host, &fleet, t0 + 2_000);
        assert_eq!(host.grpc_calls.len(), 2);
        // Recorded: gone from the store, counted.
        let token = host.grpc_calls[1].0;
        assert!(!store.on_answer(&mut host, token + 100, &answer(0, true)), "not a retry's token");
        assert!(store.on_answer(&mut host, token, &answer(0, true)));
        assert!(store.is_empty(&host));
        assert_eq!(store.lookup(&host, "ns/k"), None);
        assert_eq!(host.counter(Counter::FleetSettlesRecovered.name()), 1);
    }

    #[test]
    fn outcomes_of_several_claims_on_one_key_wait_side_by_side() {
        let mut host = FakeHost::default();
        let store = UnsettledStore::new("idempotency");
        let fleet = fleet();
        let t0 = 1_000_000;
        store.keep(&mut host, keep_request(&fleet, "k"), t0 + 60_000, t0).unwrap();
        // A copy's claim on the same key, abandoned: kept beside the answer, not over it.
        let abandon = fleet.settle_request("k", "t9", "", Settlement::Abandon { window: Duration::from_secs(60) });
        store.keep(&mut host, abandon, 0, t0).unwrap();
        assert_eq!(store.len(&host), 2);
        assert_eq!(store.lookup(&host, "ns/k").map(|r| r.token), Some("t1".to_string()));
        store.retry(&mut host, &fleet, t0 + 1_000);
        let sent: Vec<(u32, SettleRequest)> = host.grpc_calls.iter().map(|c| (c.0, SettleRequest::decode(c.3.as_slice()).unwrap())).collect();
        assert_eq!(sent.iter().map(|(_, r)| r.token.as_str()).collect::<Vec<_>>(), ["t1", "t9"]);
        assert!(store.on_answer(&mut host, sent[1].0, &answer(0, true)));
        assert_eq!(store.lookup(&host, "ns/k").map(|r| r.token), Some("t1".to_string()), "the answer is still kept");
        assert!(store.on_answer(&mut host, sent[0].0, &answer(0, true)));
        assert!(store.is_empty(&host));
        // Settles scheduled for the tick are not recoveries: nothing failed first.
        assert_eq!(host.counter(Counter::FleetSettlesRecovered.name()), 0);
    }

    #[test]
    fn conflicts_ended_windows_and_a_full_store_are_counted_not_retried_forever() {
        let mut host = FakeHost::default();
        let store = UnsettledStore::new("webhook");
        let fleet = fleet();
        let t0 = 1_000_000;
        store.keep(&mut host, keep_request(&fleet, "a"), t0 + 60_000, t0).unwrap();
        store.keep(&mut host, fleet.settle_request("b", "t2", "", Settlement::Release), 0, t0).unwrap();
        store.retry(&mut host, &fleet, t0 + 1_000);
        assert_eq!(host.grpc_calls.len(), 2);
        // Another claim holds `a`: an error, counted, not sent again.
        let (a, b) = (host.grpc_calls[0].0, host.grpc_calls[1].0);
        assert!(store.on_answer(&mut host, a, &answer(0, false)));
        assert_eq!(host.counter(Counter::FleetSettleConflicts.name()), 1);
        assert!(store.on_answer(&mut host, b, &answer(0, true)));
        assert!(store.is_empty(&host));
        // A keep whose window is over is dropped without a call.
        store.keep(&mut host, keep_request(&fleet, "c"), t0 + 2_000, t0).unwrap();
        store.retry(&mut host, &fleet, t0 + 5_000);
        assert_eq!(host.grpc_calls.len(), 2);
        assert!(store.is_empty(&host));
        // Full: refused (the caller counts the outcome as lost).
        for i in 0..MAX_UNSETTLED {
            store.keep(&mut host, keep_request(&fleet, &format!("k{i}")), t0 + 60_000, t0).unwrap();
        }
        assert_eq!(store.keep(&mut host, keep_request(&fleet, "one-more"), t0 + 60_000, t0), Err(KeepError::Full));
        // The same claim again replaces its entry rather than taking a second slot.
        store.keep(&mut host, keep_request(&fleet, "k7"), t0 + 60_000, t0).unwrap();
        assert_eq!(store.len(&host), MAX_UNSETTLED);
    }
}
