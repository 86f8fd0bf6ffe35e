//! The seen-set on Redis (webhook deliveries, idempotency keys): claim a key while the upstream
//! handles it, then keep it as seen (with a record: the stored answer) or release it. Each step
//! is one atomic Redis script; expiry is Redis's (`PX`). An entry is a hash: `token` while in
//! flight, `fp` (the fingerprint it was claimed with), `record` once seen.

use meshward_core::fleet::{ClaimRequest, ClaimResponse, ClaimState, SettleRequest, SettleResponse, MAX_RECORD_BYTES};
use redis::aio::ConnectionManager;
use redis::Script;
use tonic::Status;

/// Claims the key if free; otherwise says whether it is in flight or seen, for how long, with
/// its fingerprint (and record when seen).
const CLAIM: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'token', ARGV[1], 'fp', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0, '', ''}
end
local entry = redis.call('HMGET', KEYS[1], 'token', 'fp', 'record')
local ttl = redis.call('PTTL', KEYS[1])
if entry[1] then return {2, ttl, entry[2] or '', ''} end
return {3, ttl, entry[2] or '', entry[3] or ''}
";

/// Settles a claim still held by this token: keep as seen (with its record), or release.
const SETTLE: &str = r"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[1], 'token')
  redis.call('HSET', KEYS[1], 'record', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// Longest hold or keep accepted: a week (a replay window beyond that is a misconfiguration).
const MAX_MS: u64 = 7 * 24 * 3600 * 1000;

pub struct SeenSet {
    redis: ConnectionManager,
    claim: Script,
    settle: Script,
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
    pub fn new(redis: ConnectionManager) -> SeenSet {
        SeenSet { redis, claim: Script::new(CLAIM), settle: Script::new(SETTLE) }
    }

    pub async fn claim(&self, request: ClaimRequest) -> Result<ClaimResponse, Status> {
        let key = redis_key(&request.key)?;
        let hold_ms = duration_ms("hold_ms", request.hold_ms)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut redis = self.redis.clone();
        if request.fingerprint.len() > 256 {
            return Err(Status::invalid_argument("a fingerprint is at most 256 bytes"));
        }
        let (state, remaining, fingerprint, record): (i64, i64, String, Vec<u8>) = self
            .claim
            .key(&key)
            .arg(&token)
            .arg(hold_ms)
            .arg(&request.fingerprint)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        let remaining_ms = u64::try_from(remaining).unwrap_or(0);
        Ok(match state {
            1 => ClaimResponse { state: ClaimState::Claimed as i32, remaining_ms: hold_ms, token, ..Default::default() },
            2 => ClaimResponse { state: ClaimState::InFlight as i32, remaining_ms, fingerprint, ..Default::default() },
            _ => ClaimResponse { state: ClaimState::Seen as i32, remaining_ms, fingerprint, record, ..Default::default() },
        })
    }

    pub async fn settle(&self, request: SettleRequest) -> Result<SettleResponse, Status> {
        let key = redis_key(&request.key)?;
        if request.token.is_empty() {
            return Err(Status::invalid_argument("settle needs the claim's token"));
        }
        let keep_ms = if request.accepted { duration_ms("keep_ms", request.keep_ms)? } else { 1 };
        if request.record.len() > MAX_RECORD_BYTES {
            return Err(Status::invalid_argument(format!("a record is at most {MAX_RECORD_BYTES} bytes")));
        }
        let mut redis = self.redis.clone();
        let settled: i64 = self
            .settle
            .key(&key)
            .arg(&request.token)
            .arg(if request.accepted { "1" } else { "0" })
            .arg(keep_ms)
            .arg(&request.record)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(SettleResponse { settled: settled == 1 })
    }
}
