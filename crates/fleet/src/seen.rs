//! The seen-set on Redis (webhook deliveries, idempotency keys): claim a key while the upstream
//! handles it, then keep it as seen (with a record: the stored answer), release it, or let it
//! lapse. Each step is one atomic Redis script; expiry is Redis's (`PX`). An entry is a hash:
//! `token` while in flight, `lease` (unix ms: until when the upstream is expected to answer),
//! `fp` (the fingerprint it was claimed with), `record` and `settled` (the token that settled
//! it) once seen; and `abandoned:<token>` for claims their filters gave up on before they arrived
//! (a key with only those is free).
//!
//! A claim lives for its whole window (`window_ms`) until it is settled, so a filter that could
//! not reach the engine with the outcome finds the claim still there when it sends it again,
//! and no other request takes the key meanwhile. A settle is idempotent, and writes a kept
//! outcome anew when the entry is gone (Redis lost it).
//!
//! Redis that restarts empty (no persistence) loses claims whose outcomes sidecars still hold.
//! The engine notices: an epoch key, written when the engine starts, is gone. Claims are then
//! refused (UNAVAILABLE) for the recovery period, so the sidecars' retries re-record what they
//! hold before any copy can claim a key again. Outcomes recorded before the loss are gone.

use meshward_core::fleet::{ClaimRequest, ClaimResponse, ClaimState, SettleOutcome, SettleRequest, SettleResponse, MAX_RECORD_BYTES};
use redis::aio::ConnectionManager;
use redis::Script;
use tonic::Status;

/// Unix ms now, from Redis's clock (every engine shares it).
const NOW_MS: &str = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Notices a Redis that lost its data (KEYS[2], the epoch, is gone): the epoch is written again
/// and claims wait for the recovery period (KEYS[3] lives for ARGV[1] ms). Then refuses claims
/// while recovering: {4, ms left}.
const RECOVERY: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], now)
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
end
";

/// Claims the key if free (ARGV after the recovery period: token, hold_ms, fingerprint,
/// window_ms), unless this very claim was abandoned by its filter before it arrived ({5});
/// otherwise says
/// whether it is in flight (retry after what is left of the hold, or in a few seconds once the
/// hold has passed and the outcome is still unknown) or seen, with its fingerprint (and record).
const CLAIM: &str = r"
local recovering = redis.call('PTTL', KEYS[3])
if recovering > 0 then return {4, recovering, '', ''} end
if redis.call('HEXISTS', KEYS[1], 'abandoned:' .. ARGV[2]) == 1 then return {5, 0, '', ''} end
local entry = redis.call('HMGET', KEYS[1], 'token', 'fp', 'record', 'lease')
if not entry[1] and not entry[3] then
  redis.call('HSET', KEYS[1], 'token', ARGV[2], 'fp', ARGV[4], 'lease', now + tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {1, tonumber(ARGV[3]), '', ''}
end
local ttl = redis.call('PTTL', KEYS[1])
if entry[1] then
  local retry = (tonumber(entry[4]) or 0) - now
  if retry < 1000 then retry = 5000 end
  if ttl > 0 and retry > ttl then retry = ttl end
  return {2, retry, entry[2] or '', ''}
end
return {3, ttl, entry[2] or '', entry[3] or ''}
";

/// Settles a claim (ARGV after the recovery period: token, mode — keep, release, lapse or
/// abandon —, keep_ms, record, fingerprint). 1: done (now, or already by this token); 0: the
/// key is another claim's. Settles go on while recovering: they are what recovery waits for.
/// An abandoned claim that is not there leaves a marker (`abandoned:<token>`) for `keep_ms`, so
/// the claim, should it still arrive, is refused; another claim's key is left alone. A key
/// holding only markers is free: no claim, no outcome.
const SETTLE: &str = r"
local entry = redis.call('HMGET', KEYS[1], 'token', 'settled', 'lease', 'record')
if ARGV[3] == 'abandon' then
  if entry[1] == ARGV[2] then
    redis.call('DEL', KEYS[1])
  elseif not entry[1] and not entry[4] then
    redis.call('HSET', KEYS[1], 'abandoned:' .. ARGV[2], '1')
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
  return 1
end
if entry[1] == ARGV[2] then
  if ARGV[3] == 'keep' then
    redis.call('HDEL', KEYS[1], 'token', 'lease')
    redis.call('HSET', KEYS[1], 'record', ARGV[5], 'settled', ARGV[2])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  elseif ARGV[3] == 'lapse' and (tonumber(entry[3]) or 0) > now then
    redis.call('PEXPIREAT', KEYS[1], entry[3])
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
if entry[1] then return 0 end
if entry[4] then
  if entry[2] == ARGV[2] then return 1 end
  return 0
end
if ARGV[3] == 'keep' then
  redis.call('HSET', KEYS[1], 'fp', ARGV[6], 'record', ARGV[5], 'settled', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
";

/// The epoch key (written when an engine starts; gone: Redis lost its data) and the recovery
/// marker. Outside `meshward:seen:` so no seen-set key can name them.
const EPOCH_KEY: &str = "meshward:seen-state:epoch";
const RECOVERING_KEY: &str = "meshward:seen-state:recovering";

/// Longest hold or keep accepted: a week (a replay window beyond that is a misconfiguration).
const MAX_MS: u64 = 7 * 24 * 3600 * 1000;

pub struct SeenSet {
    redis: ConnectionManager,
    claim: Script,
    settle: Script,
    recovery_ms: u64,
}

fn redis_key(key: &str) -> Result<String, Status> {
    if key.is_empty() || key.len() > 512 {
        return Err(Status::invalid_argument("a seen-set key is 1 to 512 bytes"));
    }
    Ok(format!("meshward:seen:{key}"))
}

fn duration_ms(name: &str, ms: u64) -> Result<u64, Status> {
    if ms == 0 || ms > MAX_MS {
        return Err(Status::invalid_argument(format!("{name} must be between 1 ms and 7 days")));
    }
    Ok(ms)
}

fn unavailable(e: redis::RedisError) -> Status {
    Status::unavailable(format!("seen-set storage: {e}"))
}

impl SeenSet {
    /// A seen-set on `redis` that waits `recovery` after noticing Redis lost its data.
    pub fn new(redis: ConnectionManager, recovery: std::time::Duration) -> SeenSet {
        SeenSet {
            redis,
            claim: Script::new(&format!("{NOW_MS}{RECOVERY}{CLAIM}")),
            settle: Script::new(&format!("{NOW_MS}{RECOVERY}{SETTLE}")),
            recovery_ms: u64::try_from(recovery.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Writes the epoch if there is none (this engine starts on this Redis: nothing to recover
    /// that it could know of).
    pub async fn start(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        redis::cmd("SET")
            .arg(EPOCH_KEY)
            .arg(now.to_string())
            .arg("NX")
            .query_async::<Option<String>>(&mut redis)
            .await
            .map(|_| ())
            .map_err(|e| format!("seen-set storage: {e}"))
    }

    pub async fn claim(&self, request: ClaimRequest) -> Result<ClaimResponse, Status> {
        let key = redis_key(&request.key)?;
        let hold_ms = duration_ms("hold_ms", request.hold_ms)?;
        // Older filters send no window: the claim lives for its hold.
        let window_ms = if request.window_ms == 0 { hold_ms } else { duration_ms("window_ms", request.window_ms)?.max(hold_ms) };
        let token = if request.token.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()
        } else if request.token.len() <= 64 && request.token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            request.token.clone()
        } else {
            return Err(Status::invalid_argument("a claim token is 1 to 64 letters and digits"));
        };
        let mut redis = self.redis.clone();
        if request.fingerprint.len() > 256 {
            return Err(Status::invalid_argument("a fingerprint is at most 256 bytes"));
        }
        let (state, remaining, fingerprint, record): (i64, i64, String, Vec<u8>) = self
            .claim
            .key(&key)
            .key(EPOCH_KEY)
            .key(RECOVERING_KEY)
            .arg(self.recovery_ms)
            .arg(&token)
            .arg(hold_ms)
            .arg(&request.fingerprint)
            .arg(window_ms)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        let remaining_ms = u64::try_from(remaining).unwrap_or(0);
        Ok(match state {
            1 => ClaimResponse { state: ClaimState::Claimed as i32, remaining_ms: hold_ms, token, ..Default::default() },
            2 => ClaimResponse { state: ClaimState::InFlight as i32, remaining_ms, fingerprint, ..Default::default() },
            4 => {
                return Err(Status::unavailable(format!(
                    "seen-set storage lost its data: claims wait {remaining_ms} ms more while sidecars record the outcomes they hold"
                )))
            }
            5 => return Err(Status::failed_precondition("this claim was abandoned by its filter before it arrived")),
            _ => ClaimResponse { state: ClaimState::Seen as i32, remaining_ms, fingerprint, record, ..Default::default() },
        })
    }

    pub async fn settle(&self, request: SettleRequest) -> Result<SettleResponse, Status> {
        let key = redis_key(&request.key)?;
        if request.token.is_empty() {
            return Err(Status::invalid_argument("settle needs the claim's token"));
        }
        let keep_ms = duration_ms("keep_ms", request.keep_ms)?;
        if request.record.len() > MAX_RECORD_BYTES {
            return Err(Status::invalid_argument(format!("a record is at most {MAX_RECORD_BYTES} bytes")));
        }
        if request.fingerprint.len() > 256 {
            return Err(Status::invalid_argument("a fingerprint is at most 256 bytes"));
        }
        let mode = match SettleOutcome::try_from(request.outcome) {
            Ok(SettleOutcome::Keep) => "keep",
            Ok(SettleOutcome::Release) => "release",
            Ok(SettleOutcome::Lapse) => "lapse",
            Ok(SettleOutcome::Abandon) => "abandon",
            Ok(SettleOutcome::Unspecified) if request.accepted => "keep",
            Ok(SettleOutcome::Unspecified) => "release",
            Err(_) => return Err(Status::invalid_argument(format!("unknown settle outcome {}", request.outcome))),
        };
        let mut redis = self.redis.clone();
        let settled: i64 = self
            .settle
            .key(&key)
            .key(EPOCH_KEY)
            .key(RECOVERING_KEY)
            .arg(self.recovery_ms)
            .arg(&request.token)
            .arg(mode)
            .arg(keep_ms)
            .arg(&request.record)
            .arg(&request.fingerprint)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(SettleResponse { settled: settled == 1 })
    }
}
