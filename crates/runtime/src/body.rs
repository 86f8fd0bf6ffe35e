//! Bodies as the service reads them: request bodies decoded from their content coding once for
//! every stage; answers with a coding a stage cannot read.

use meshward_core::request::{body_overrides_method, coding, decode, BodyError};
use meshward_core::RequestState;
use meshward_host::Host;

/// The body as the service reads it: decoded when it came with a content coding. A form body
/// that names another method (`_method`) is refused here, for every stage.
/// `Err(None)`: it could not be read from the proxy.
pub fn decoded(request: &RequestState, raw: Vec<u8>, limit: usize) -> Result<Vec<u8>, Option<BodyError>> {
    if raw.is_empty() {
        return Ok(raw);
    }
    let body = match coding(request.header("content-encoding")).map_err(Some)? {
        None => raw,
        Some(c) => decode(c, &raw, limit).map_err(Some)?,
    };
    if body_overrides_method(request.header("content-type"), &body) {
        return Err(Some(BodyError::MethodOverride));
    }
    Ok(body)
}

/// The answer carries a content coding (anything but none or `identity`).
pub fn response_is_encoded(host: &dyn Host) -> bool {
    !matches!(coding(host.response_header("content-encoding").as_deref()), Ok(None))
}
