//! Strict configuration parsing shared by every policy.

use serde::de::DeserializeOwned;
use std::time::Duration;

/// A configuration that cannot be applied, with the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path to the field (`providers.auth0.issuer`); empty for the document itself.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks the name of an Envoy cluster a filter calls over gRPC: one Envoy will read as that
/// cluster whatever its bytes ([`meshward_host::grpc_target`]).
pub fn check_grpc_cluster(path: &str, cluster: &str) -> Result<(), ConfigError> {
    if cluster.trim().is_empty() {
        return Err(ConfigError::new(path, "must name the Envoy cluster to call"));
    }
    if meshward_host::grpc_target(cluster).is_none() {
        return Err(ConfigError::new(
            path,
            format!("an Envoy cluster called over gRPC has a name of at most {} bytes", meshward_host::MAX_GRPC_CLUSTER_NAME),
        ));
    }
    Ok(())
}

/// Parses JSON into `T`, refusing it whole on the first error and naming where it is.
/// `T` is expected to use `#[serde(deny_unknown_fields)]` so a typo is an error, never a default.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    from_json(&read_json(bytes)?)
}

/// A configuration's JSON, before it is read as its type ([`from_json`]): for a parser that
/// looks at the document first.
pub fn read_json(bytes: &[u8]) -> Result<serde_json::Value, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new("", "configuration is empty"));
    }
    serde_json::from_slice(bytes).map_err(|e| ConfigError::new(".", redact_values(&e.to_string())))
}

/// A configuration's JSON read as `T`, as [`parse_json`] reads it.
pub fn from_json<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ConfigError> {
    crate::config_de::from_value(value).map_err(|e| ConfigError::new(e.path(), redact_values(e.message())))
}

/// serde quotes the offending value (`invalid type: string "whsec_…", expected a sequence`); a
/// secret put in the wrong place must not reach the log, so quoted values become `"…"`.
/// Field and variant names (in backticks) stay: they are what the reader needs.
fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        // serde escapes quotes inside the value; find the closing, unescaped one.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        match end {
            Some(i) => {
                out.push_str("…\"");
                rest = &after[i + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// How many body bytes a filter buffers when its configuration does not say.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The most any configuration may ask to buffer.
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// A configured body-buffering limit (`max_body_bytes` and the like): the default when absent,
/// refused when outside 1..=[`MAX_BODY_LIMIT`].
pub fn body_limit(path: &str, value: Option<usize>) -> Result<usize, ConfigError> {
    match value {
        None => Ok(DEFAULT_BODY_LIMIT),
        Some(n) if (1..=MAX_BODY_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ConfigError::new(path, format!("must be between 1 and {MAX_BODY_LIMIT}"))),
    }
}

/// What happens to requests that no rule or endpoint of a policy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Refuse (403 `route_not_covered`): a forgotten route is not an open route.
    #[default]
    Deny,
    Allow,
}

/// A header name meshward may read or write: lower-case token characters, not a pseudo-header.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b))
}

/// Checks a rule or endpoint name: it appears in metric names, logs and shared-data keys.
pub fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        return Err(ConfigError::new(path, "must be letters, digits, '-' or '_'"));
    }
    Ok(())
}

/// Parses a protobuf-JSON duration (`"5s"`, `"1.5s"`, `"300s"`), as Envoy configs write them.
pub fn parse_duration(path: &str, text: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::new(path, format!("`{text}` is not a duration like \"5s\" or \"0.5s\""));
    let number = text.strip_suffix('s').ok_or_else(bad)?;
    if number.is_empty() || number.starts_with(['-', '+']) {
        return Err(bad());
    }
    let secs: f64 = number.parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs > 315_576_000_000.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A configuration's fingerprint: 64-bit FNV-1a of its bytes, as 16 hex digits. It names which
/// configuration a proxy runs (`meshward rollout status` computes the same from the policy);
/// identification, not integrity.
pub fn fingerprint(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn fingerprints() {
        // FNV-1a 64 reference values.
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
        assert_eq!(fingerprint(b"a"), "af63dc4c8601ec8c");
        assert_ne!(fingerprint(br#"{"mode":"shadow"}"#), fingerprint(br#"{"mode":"enforce"}"#));
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        issuer: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        providers: std::collections::BTreeMap<String, Inner>,
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = parse_json::<Outer>(br#"{"providers": {"a": {"isuer": "x"}}}"#).unwrap_err();
        assert_eq!(err.path, "providers.a.isuer");
        assert!(err.message.contains("unknown field `isuer`"), "{err}");
    }

    #[test]
    fn values_never_reach_the_message() {
        let cases: [(&[u8], &str); 3] = [
            (br#"{"providers": {"a": {"issuer": 5}}}"#, "invalid type: integer `5`, expected a string"),
            (br#"{"providers": "whsec_s3cret"}"#, "invalid type: string \"…\", expected a map"),
            (br#"{"providers": "tricky \" whsec_s3cret"}"#, "invalid type: string \"…\", expected a map"),
        ];
        for (json, want) in cases {
            let err = parse_json::<Outer>(json).unwrap_err();
            assert!(err.message.starts_with(want), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn empty_document_is_refused() {
        assert_eq!(parse_json::<Outer>(b"  ").unwrap_err().message, "configuration is empty");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("t", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("t", "0.25s").unwrap(), Duration::from_millis(250));
        for bad in ["5", "s", "-1s", "1m", "abc", "NaNs", "infs", "1e300s"] {
            assert!(parse_duration("t", bad).is_err(), "{bad}");
        }
    }
}
