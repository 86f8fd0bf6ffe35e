//! Time as policies use it: from the host, so tests control it.

use std::time::UNIX_EPOCH;

use meshward_host::Host;

/// Unix seconds now (0 if the host clock is before 1970).
pub fn unix_secs(host: &dyn Host) -> u64 {
    host.now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Unix milliseconds now (what the fleet engine's windows are counted in).
pub fn unix_millis(host: &dyn Host) -> u64 {
    unix_micros(host) / 1000
}

/// Unix microseconds now.
pub fn unix_micros(host: &dyn Host) -> u64 {
    host.now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}
