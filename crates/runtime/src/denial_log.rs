//! What a denial leaves behind: one JSON log line, the local response, and the deny reasons
//! the runtime itself gives (the stages' own are their crates' error enums).

use meshward_core::{Denial, DenialKind, RequestState};
use meshward_host::Host;

/// Why the runtime (not a policy) refused. Each variant is one deny reason users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeDenial {
    /// 503 `stage_error`: a stage asked for what its phase cannot give (the request body after
    /// it was delivered, a stored answer in place of a response).
    StageError,
    /// 503 `body_unavailable`: the proxy did not hand over the buffered request body.
    BodyUnavailable,
    /// 503 `response_too_large`: an answer a stage must read is larger than its limit.
    ResponseTooLarge,
    /// 503 `body_unavailable`: the proxy did not hand over the buffered answer.
    ResponseUnavailable,
    /// 502 `encoded_response`: an answer a stage must read came with a content coding.
    EncodedResponse,
    /// 503 `filter_unconfigured`: the VM has no valid configuration.
    FilterUnconfigured,
    /// 502 `answered_before_checked`: the service answered (not a refusal) before the request
    /// body it answers was checked; deploy with `allow_on_headers_stop_iteration` so headers
    /// wait for the body.
    AnsweredBeforeChecked,
    /// 408 `body_timeout`: the body a stage holds the request for did not arrive within the
    /// bound (`MESHWARD_BODY_TIMEOUT_SECONDS`).
    BodyTimeout,
}

impl RuntimeDenial {
    pub fn denial(self) -> Denial {
        let (kind, reason, message) = match self {
            RuntimeDenial::StageError => (DenialKind::Unavailable, "stage_error", "a stage asked for what this phase cannot give"),
            RuntimeDenial::BodyUnavailable => (DenialKind::Unavailable, "body_unavailable", "the request body could not be read"),
            RuntimeDenial::ResponseTooLarge => (DenialKind::Unavailable, "response_too_large", "the response is too large to be checked"),
            RuntimeDenial::ResponseUnavailable => (DenialKind::Unavailable, "body_unavailable", "the response body could not be read"),
            // A classified field must not leave because it was compressed.
            RuntimeDenial::EncodedResponse => {
                (DenialKind::BadGateway, "encoded_response", "the answer has a content-encoding and cannot be checked")
            }
            RuntimeDenial::FilterUnconfigured => (DenialKind::Unavailable, "filter_unconfigured", "the filter has no valid configuration"),
            RuntimeDenial::BodyTimeout => (DenialKind::RequestTimeout, "body_timeout", "the request body did not arrive in time"),
            RuntimeDenial::AnsweredBeforeChecked => {
                (DenialKind::BadGateway, "answered_before_checked", "the service answered before the request body was checked")
            }
        };
        Denial::new(kind, reason, message)
    }
}

/// One JSON line per denial: request id, principal and calling workload when known, route,
/// reason.
pub fn log_line(stage: &str, route: Option<&str>, request: &RequestState, denial: &Denial, shadow: bool) -> String {
    let path = if request.refusal.is_some() { "<invalid>" } else { request.canonical.as_str() };
    let principal = request.principal.as_ref().and_then(|p| p.subject.as_deref());
    let workload = request.workload.as_ref().and_then(|w| w.as_deref()).map(|w| w.spiffe_id.as_str());
    let line = serde_json::json!({
        "filter": format!("meshward_{stage}"),
        "decision": if shadow { "shadow_deny" } else { "deny" },
        "status": denial.status(),
        "reason": denial.reason,
        "request_id": request.request_id,
        "principal": principal,
        "workload": workload,
        "route": route,
        "method": request.method,
        "path": path,
    });
    format!("meshward_{stage}: {line}")
}

/// Sends the local response for a denial: status, challenge headers, JSON body; to a gRPC
/// call, a trailers-only gRPC answer with the status the denial maps to, its message, and the
/// reason and challenge headers as metadata.
pub fn send_denial(host: &mut dyn Host, denial: &Denial, request_id: Option<&str>, grpc: bool) {
    let extra = denial.headers();
    if grpc {
        let mut metadata: Vec<(&str, &str)> = vec![("meshward-reason", denial.reason)];
        metadata.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
        host.send_grpc_response(denial.grpc_status() as u32, &denial.message, &metadata);
        return;
    }
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
    host.send_response(denial.status(), &headers, &denial.body(request_id));
}
