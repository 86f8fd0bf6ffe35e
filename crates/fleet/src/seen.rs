//! The webhook seen-set on Redis: claim a delivery key while the upstream handles it, then keep
//! it as seen or release it. Each step is one atomic Redis script; expiry is Redis's (`PX`).

use meshward_core::fleet::{ClaimRequest, ClaimResponse, ClaimState, SettleRequest, SettleResponse};
use redis::aio::ConnectionManager;
use redis::Script;
use tonic::Status;

/// Claims the key if free; otherwise says whether it is in flight or seen, and for how long.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
local value = redis.call('GET', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if not value then return {0, 0} end
if string.sub(value, 1, 2) == 'f:' then return {2, ttl} end
return {3, ttl}
";

/// Settles a claim still held by this token: keep as seen, or release.
const SETTLE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('SET', KEYS[1], 's', 'PX', ARGV[3]) else redis.call('DEL', KEYS[1]) end
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
        let (state, remaining): (i64, i64) =
            self.claim.key(&key).arg(format!("f:{token}")).arg(hold_ms).invoke_async(&mut redis).await.map_err(unavailable)?;
        let remaining_ms = u64::try_from(remaining).unwrap_or(0);
        Ok(match state {
            1 => ClaimResponse { state: ClaimState::Claimed as i32, remaining_ms: hold_ms, token },
            2 => ClaimResponse { state: ClaimState::InFlight as i32, remaining_ms, token: String::new() },
            3 => ClaimResponse { state: ClaimState::Seen as i32, remaining_ms, token: String::new() },
            // The entry expired between SET and GET: the caller retries.
            _ => ClaimResponse { state: ClaimState::InFlight as i32, remaining_ms: 1, token: String::new() },
        })
    }

    pub async fn settle(&self, request: SettleRequest) -> Result<SettleResponse, Status> {
        let key = redis_key(&request.key)?;
        if request.token.is_empty() {
            return Err(Status::invalid_argument("settle needs the claim's token"));
        }
        let keep_ms = if request.accepted { duration_ms("keep_ms", request.keep_ms)? } else { 1 };
        let mut redis = self.redis.clone();
        let settled: i64 = self
            .settle
            .key(&key)
            .arg(format!("f:{}", request.token))
            .arg(if request.accepted { "1" } else { "0" })
            .arg(keep_ms)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(SettleResponse { settled: settled == 1 })
    }
}
