//! The idempotency filter's configuration, parsed strictly and compiled once.

use std::time::Duration;

use meshward_core::config::{body_limit, check_name, parse_duration, parse_json, valid_header_name, ConfigError};
use meshward_core::fleet::{FailureMode, FleetService, RawFleetService, MAX_RECORD_BYTES};
use meshward_core::route::{RawRouteMatch, RouteMatch};
use meshward_core::Mode;
use serde::Deserialize;

/// The IETF draft's header.
const DEFAULT_HEADER: &str = "idempotency-key";
/// How long a stored answer is given back to retries (Stripe: 24 h).
const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// The engine keeps entries at most a week.
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Clients time out after 10–60 s; a request still unanswered after two minutes is not coming back.
const DEFAULT_IN_FLIGHT_SECONDS: u64 = 120;
const DEFAULT_MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Room in a record for the status and headers.
const MAX_ANSWER_BYTES: usize = MAX_RECORD_BYTES - 64 * 1024;
/// Stored with every answer: what the client needs to read the body.
const ALWAYS_STORED: [&str; 2] = ["content-type", "content-encoding"];
const DEFAULT_STORED: [&str; 3] = ["location", "etag", "last-modified"];
/// Never stored: framing the proxy recomputes, and credentials that must not sit in the engine.
const NEVER_STORED: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "set-cookie", "authorization", "proxy-authenticate"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    header: Option<String>,
    expiry: Option<String>,
    in_flight_seconds: Option<u64>,
    max_body_bytes: Option<usize>,
    max_answer_bytes: Option<usize>,
    stored_headers: Option<Vec<String>>,
    operations: Vec<RawOperation>,
    fleet: Option<RawFleetService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    name: String,
    #[serde(rename = "match")]
    match_: RawRouteMatch,
}

/// An operation that requires an idempotency key.
#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub route: RouteMatch,
}

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub mode: Mode,
    /// Lower-case header name.
    pub header: String,
    /// How long an answer is stored.
    pub expiry: Duration,
    /// How long a claim holds when its answer never comes.
    pub in_flight: Duration,
    /// Request bodies up to this size are fingerprinted; larger ones are refused (413).
    pub max_body_bytes: usize,
    /// Answers up to this size (body) are stored; larger ones pass and are not stored.
    pub max_answer_bytes: usize,
    /// Response headers stored with an answer (lower-case).
    pub stored_headers: Vec<String>,
    pub operations: Vec<Operation>,
    pub fleet: FleetService,
}

impl IdempotencyConfig {
    pub fn parse(bytes: &[u8]) -> Result<IdempotencyConfig, ConfigError> {
        let raw: RawConfig = parse_json(bytes)?;
        let header = raw.header.unwrap_or_else(|| DEFAULT_HEADER.to_string()).to_ascii_lowercase();
        if !valid_header_name(&header) {
            return Err(ConfigError::new("header", format!("{header:?} is not a header name")));
        }
        let expiry = match raw.expiry {
            Some(text) => parse_duration("expiry", &text)?,
            None => DEFAULT_EXPIRY,
        };
        if expiry < Duration::from_secs(1) || expiry > MAX_EXPIRY {
            return Err(ConfigError::new("expiry", "must be between 1s and 604800s (7 days)"));
        }
        let in_flight_seconds = raw.in_flight_seconds.unwrap_or(DEFAULT_IN_FLIGHT_SECONDS);
        if !(1..=3600).contains(&in_flight_seconds) {
            return Err(ConfigError::new("in_flight_seconds", "must be between 1 and 3600"));
        }
        let max_answer_bytes = raw.max_answer_bytes.unwrap_or(DEFAULT_MAX_ANSWER_BYTES);
        if max_answer_bytes > MAX_ANSWER_BYTES {
            return Err(ConfigError::new("max_answer_bytes", format!("must be at most {MAX_ANSWER_BYTES}")));
        }
        let mut stored_headers: Vec<String> = ALWAYS_STORED.iter().map(|h| h.to_string()).collect();
        let configured = raw.stored_headers.unwrap_or_else(|| DEFAULT_STORED.iter().map(|h| h.to_string()).collect());
        for (i, name) in configured.into_iter().enumerate() {
            let name = name.to_ascii_lowercase();
            let path = format!("stored_headers[{i}]");
            if !valid_header_name(&name) {
                return Err(ConfigError::new(path, format!("{name:?} is not a header name")));
            }
            if NEVER_STORED.contains(&name.as_str()) {
                return Err(ConfigError::new(path, format!("{name:?} is never stored (framing or credentials)")));
            }
            if !stored_headers.contains(&name) {
                stored_headers.push(name);
            }
        }
        if raw.operations.is_empty() {
            return Err(ConfigError::new("operations", "name at least one operation that requires an idempotency key"));
        }
        let mut operations: Vec<Operation> = Vec::new();
        for (i, op) in raw.operations.into_iter().enumerate() {
            check_name(&format!("operations[{i}].name"), &op.name)?;
            if operations.iter().any(|o| o.name == op.name) {
                return Err(ConfigError::new(format!("operations[{i}].name"), format!("a second operation named {:?}", op.name)));
            }
            let route = RouteMatch::compile(op.match_).map_err(|e| ConfigError::new(format!("operations[{i}].match"), e))?;
            operations.push(Operation { name: op.name, route });
        }
        // A key one replica knows and another does not is no protection: the engine is required.
        let fleet = raw.fleet.ok_or_else(|| {
            ConfigError::new("fleet", "idempotency keys live in the fleet engine (meshward-fleet): set fleet.cluster and fleet.namespace")
        })?;
        Ok(IdempotencyConfig {
            mode: raw.mode,
            header,
            expiry,
            in_flight: Duration::from_secs(in_flight_seconds),
            max_body_bytes: body_limit("max_body_bytes", raw.max_body_bytes)?,
            max_answer_bytes,
            stored_headers,
            operations,
            fleet: FleetService::compile("fleet", fleet, FailureMode::Deny)?,
        })
    }

    /// The operation a request is on (`method` as rules see it), if any.
    pub fn operation(&self, method: &str, canonical: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.route.captures(method, canonical).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#""fleet": {"cluster": "meshward-fleet", "namespace": "shop"}"#;

    fn parse(body: &str) -> Result<IdempotencyConfig, ConfigError> {
        IdempotencyConfig::parse(format!("{{{body}}}").as_bytes())
    }

    #[test]
    fn defaults_and_operations() {
        let c = parse(&format!(r#""operations": [{{"name": "create-order", "match": {{"path": "/orders", "methods": ["post"]}}}}], {FLEET}"#)).unwrap();
        assert_eq!((c.header.as_str(), c.expiry, c.in_flight), ("idempotency-key", DEFAULT_EXPIRY, Duration::from_secs(120)));
        assert_eq!(c.stored_headers, ["content-type", "content-encoding", "location", "etag", "last-modified"]);
        assert_eq!(c.fleet.failure_mode, FailureMode::Deny, "fails closed unless told");
        assert_eq!(c.operation("POST", "/orders").map(|o| o.name.as_str()), Some("create-order"));
        assert!(c.operation("GET", "/orders").is_none());
        assert!(c.operation("POST", "/orders/1").is_none());
    }

    #[test]
    fn bad_configurations_are_refused_whole() {
        let op = r#""operations": [{"name": "o", "match": {"prefix": "/"}}]"#;
        let cases = [
            (format!(r#""operations": [], {FLEET}"#), "operations"),
            (op.to_string(), "fleet"),
            (format!(r#"{op}, {FLEET}, "expiry": "0s""#), "expiry"),
            (format!(r#"{op}, {FLEET}, "expiry": "1209600s""#), "expiry"),
            (format!(r#"{op}, {FLEET}, "expiry": "24h""#), "expiry"),
            (format!(r#"{op}, {FLEET}, "in_flight_seconds": 0"#), "in_flight_seconds"),
            (format!(r#"{op}, {FLEET}, "max_answer_bytes": 2000000"#), "max_answer_bytes"),
            (format!(r#"{op}, {FLEET}, "stored_headers": ["Set-Cookie"]"#), "stored_headers[0]"),
            (format!(r#"{op}, {FLEET}, "stored_headers": [":status"]"#), "stored_headers[0]"),
            (format!(r#"{op}, {FLEET}, "header": "bad header""#), "header"),
            (format!(r#""operations": [{{"name": "o", "match": {{"prefix": "/"}}}}, {{"name": "o", "match": {{"path": "/x"}}}}], {FLEET}"#), "operations[1].name"),
            (format!(r#""operations": [{{"name": "o", "match": {{"prefix": "x"}}}}], {FLEET}"#), "operations[0].match"),
            (format!(r#"{op}, {FLEET}, "unknown": 1"#), ""),
        ];
        for (body, field) in cases {
            let e = parse(&body).unwrap_err();
            assert!(e.to_string().contains(field), "{body}: {e}");
        }
    }
}
