//! The generic cell rate algorithm: a limit of `burst` requests at once, refilled at one
//! request per `period / requests`. The whole state of a key is one number, its theoretical
//! arrival time (TAT), so it fits one compare-and-swap in shared data.

/// A limit: `requests` per `period_us`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub period_us: u64,
    pub burst: u64,
}

impl Limit {
    /// Microseconds one request "costs" in refill time.
    pub fn emission_us(&self) -> u64 {
        (self.period_us / self.requests.max(1)).max(1)
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// TAT to store when allowed.
    pub new_tat: u64,
    /// Requests (of cost 1) still available right after this one.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When denied: seconds until this request would be allowed.
    pub retry_after_secs: u64,
}

fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Decides a request of `cost` at `now` (microseconds) given the key's stored TAT.
pub fn decide(limit: &Limit, tat: Option<u64>, now: u64, cost: u64) -> Decision {
    let t = limit.emission_us();
    let capacity = limit.burst.saturating_mul(t);
    let start = tat.unwrap_or(now).max(now);
    let new_tat = start.saturating_add(cost.saturating_mul(t));
    let used_after = new_tat - now;
    if used_after <= capacity {
        Decision {
            allowed: true,
            new_tat,
            remaining: (capacity - used_after) / t,
            reset_secs: ceil_secs(used_after),
            retry_after_secs: 0,
        }
    } else {
        let used_now = start - now;
        Decision {
            allowed: false,
            new_tat: start,
            remaining: capacity.saturating_sub(used_now) / t,
            reset_secs: ceil_secs(used_now),
            retry_after_secs: ceil_secs(used_after - capacity).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn burst_then_refill() {
        let limit = Limit { requests: 5, period_us: 60 * S, burst: 5 };
        let mut tat = None;
        for i in 0..5u64 {
            let d = decide(&limit, tat, 0, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
            tat = Some(d.new_tat);
        }
        let d = decide(&limit, tat, 0, 1);
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.retry_after_secs, d.reset_secs), (0, 12, 60));
        // One emission interval later, exactly one more.
        assert!(decide(&limit, tat, 12 * S, 1).allowed);
        assert!(!decide(&limit, tat, 12 * S - 1, 1).allowed);
        // A full period later, the whole burst again.
        assert_eq!(decide(&limit, tat, 60 * S, 1).remaining, 4);
    }

    #[test]
    fn cost_weighs_requests() {
        let limit = Limit { requests: 10, period_us: 10 * S, burst: 10 };
        let d = decide(&limit, None, 0, 4);
        assert!(d.allowed && d.remaining == 6);
        let d2 = decide(&limit, Some(d.new_tat), 0, 4);
        assert!(d2.allowed && d2.remaining == 2);
        let d3 = decide(&limit, Some(d2.new_tat), 0, 4);
        assert!(!d3.allowed, "only 2 left");
        assert_eq!(d3.retry_after_secs, 2);
        assert!(decide(&limit, Some(d2.new_tat), 0, 2).allowed, "a cheaper request still fits");
    }

    #[test]
    fn stale_tat_is_a_full_bucket() {
        let limit = Limit { requests: 2, period_us: S, burst: 2 };
        let d = decide(&limit, Some(5), 10 * S, 1);
        assert!(d.allowed && d.remaining == 1);
    }
}
