//! How long a held request waits for the body its stages must read.
//!
//! A stage that reads the whole body ([`Step::NeedBody`](meshward_core::Step)) holds the
//! request until the last byte is here. A sender that trickles it, or sends the headers and
//! then nothing, would hold it (and the connection) until Envoy's idle timeout: instead the
//! wait is bounded, and past the bound the request is answered 408 `body_timeout`. A body that
//! keeps arriving is checked at its next piece ([`Filter`](crate::Filter)); one that stopped
//! arriving is found by the VM's tick ([`expired`]), which answers in that request's context.
//! Requests the proxy holds are this VM's (one thread): the table is thread-local.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

/// The VM environment variable that sets the bound, in whole seconds (1 to 3600).
pub const BODY_TIMEOUT_ENV: &str = "MESHWARD_BODY_TIMEOUT_SECONDS";

/// The bound without [`BODY_TIMEOUT_ENV`]: from the request headers to the body's last byte.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The bound [`BODY_TIMEOUT_ENV`] sets, or why its value is refused.
pub fn body_timeout(env: Option<&str>) -> Result<Duration, String> {
    let Some(text) = env else { return Ok(DEFAULT_BODY_TIMEOUT) };
    match text.trim().parse::<u64>() {
        Ok(seconds @ 1..=3600) => Ok(Duration::from_secs(seconds)),
        _ => Err(format!("{BODY_TIMEOUT_ENV} must be whole seconds from 1 to 3600")),
    }
}

/// A request waiting for its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// The proxy's id of the request's context.
    pub context: u32,
    pub deadline: SystemTime,
    /// Sent with the answer: the request's id, and whether it is a gRPC call.
    pub request_id: Option<String>,
    pub grpc: bool,
    /// The tick answered it (408); the request's own filter counts and logs it when it ends.
    pub answered: bool,
}

thread_local! {
    static WAITING: RefCell<Vec<Wait>> = const { RefCell::new(Vec::new()) };
}

/// The request in `wait.context` waits for its body until `wait.deadline`.
pub fn start(wait: Wait) {
    WAITING.with(|w| {
        let mut waiting = w.borrow_mut();
        waiting.retain(|x| x.context != wait.context);
        waiting.push(wait);
    });
}

/// The request no longer waits (its body is here, it was refused, or it ended): its entry, if
/// it had one.
pub fn stop(context: u32) -> Option<Wait> {
    WAITING.with(|w| {
        let mut waiting = w.borrow_mut();
        let at = waiting.iter().position(|x| x.context == context)?;
        Some(waiting.remove(at))
    })
}

/// The requests whose deadline passed and that were not answered yet, now marked answered (the
/// caller answers them).
pub fn expired(now: SystemTime) -> Vec<Wait> {
    WAITING.with(|w| {
        w.borrow_mut()
            .iter_mut()
            .filter(|x| !x.answered && x.deadline <= now)
            .map(|x| {
                x.answered = true;
                x.clone()
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(context: u32, at: u64) -> Wait {
        Wait { context, deadline: SystemTime::UNIX_EPOCH + Duration::from_secs(at), request_id: None, grpc: false, answered: false }
    }

    #[test]
    fn each_wait_is_answered_once_past_its_deadline() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        start(wait(1, 10));
        start(wait(2, 20));
        assert_eq!(expired(at(9)), vec![]);
        assert_eq!(expired(at(10)).iter().map(|w| w.context).collect::<Vec<_>>(), [1]);
        assert_eq!(expired(at(15)), vec![], "answered once");
        assert!(stop(1).is_some_and(|w| w.answered), "its filter learns it was answered");
        assert!(stop(2).is_some_and(|w| !w.answered));
        assert_eq!(stop(2), None);
        assert_eq!(expired(at(100)), vec![], "a stopped wait is gone");
    }

    #[test]
    fn the_bound_is_whole_seconds() {
        assert_eq!(body_timeout(None), Ok(DEFAULT_BODY_TIMEOUT));
        assert_eq!(body_timeout(Some("5")), Ok(Duration::from_secs(5)));
        for bad in ["0", "3601", "1.5", "-1", "soon", ""] {
            assert!(body_timeout(Some(bad)).is_err(), "{bad}");
        }
    }
}
