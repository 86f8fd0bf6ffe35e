//! The boundary between meshward and the proxy.
//!
//! Filters never call proxy-wasm hostcalls directly: they talk to a [`Host`]. On wasm32 that is
//! [`ProxyWasmHost`] (thin wrappers over the hostcalls); in tests it is [`FakeHost`], which records
//! everything a filter did so behaviour can be asserted on the host machine.

use std::time::{Duration, SystemTime};

mod fake;
#[cfg(target_arch = "wasm32")]
mod proxy;

pub use fake::{DispatchedCall, FakeHost, SentResponse, SharedStore};
#[cfg(target_arch = "wasm32")]
pub use proxy::ProxyWasmHost;

/// Severity of a log line written through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Longest Envoy cluster name a gRPC call can address ([`grpc_target`]).
pub const MAX_GRPC_CLUSTER_NAME: usize = 109;

/// The `:authority` of meshward's gRPC calls. Envoy's default is the cluster name, which is no
/// valid authority for names such as Istio's `outbound|8081||fleet.ns.svc.cluster.local` (the
/// HTTP/2 codec refuses the request).
pub const GRPC_AUTHORITY: &str = "meshward-fleet";

/// The target of a gRPC call as Envoy must read it: a serialized
/// `envoy.config.core.v3.GrpcService` whose `envoy_grpc` names `cluster` (and
/// [`GRPC_AUTHORITY`]).
///
/// proxy-wasm's `proxy_grpc_call` hands Envoy the target as bytes that Envoy first parses as a
/// `GrpcService`, and only when that fails takes them as a bare cluster name. Many names parse
/// (`meshward-fleet` reads as a fixed32 field 13 and a fixed64 field 12), giving a service with
/// no target set, on which Envoy aborts (`panic: unset oneof`, envoyproxy/envoy#15208); others
/// parse as a service naming another cluster. A serialized service is read one way only. Names
/// up to [`MAX_GRPC_CLUSTER_NAME`] bytes keep every length prefix below 0x80, so the target
/// stays valid UTF-8 (the SDK takes a `&str`); longer or empty names are `None`
/// (configurations refuse them).
pub fn grpc_target(cluster: &str) -> Option<String> {
    if cluster.is_empty() || cluster.len() > MAX_GRPC_CLUSTER_NAME {
        return None;
    }
    // GrpcService { envoy_grpc (1): EnvoyGrpc { cluster_name (1), authority (2) } }
    let name = u8::try_from(cluster.len()).ok()?;
    let authority = u8::try_from(GRPC_AUTHORITY.len()).ok()?;
    let inner = name.checked_add(authority)?.checked_add(4)?;
    let mut target = String::with_capacity(usize::from(inner) + 2);
    target.push('\n');
    target.push(char::from(inner));
    target.push('\n');
    target.push(char::from(name));
    target.push_str(cluster);
    target.push('\u{12}');
    target.push(char::from(authority));
    target.push_str(GRPC_AUTHORITY);
    Some(target)
}

/// Why a hostcall failed. Callers treat every variant as "could not do it" and fail closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The proxy refused the call (unknown cluster, bad argument, ...), with the status it gave.
    Refused(String),
    /// A compare-and-swap write to shared data lost a race; read again and retry.
    CasMismatch,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Refused(why) => write!(f, "proxy refused the call: {why}"),
            HostError::CasMismatch => f.write_str("shared data changed since it was read"),
        }
    }
}

/// The answer to an outgoing HTTP call made with [`Host::dispatch_http_call`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// `:status` of the reply; `None` when the call failed before any reply (reset, timeout).
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An outgoing HTTP request to an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall<'a> {
    pub cluster: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// Everything a meshward filter may ask of the proxy.
///
/// Header names are lower-case, as Envoy presents them. Methods that can fail return a
/// `Result` so the caller decides how to fail closed; methods whose failure cannot change a
/// decision (logging, metrics) swallow errors.
pub trait Host {
    /// Wall-clock time as the proxy sees it.
    fn now(&self) -> SystemTime;

    /// First value of a request header.
    fn request_header(&self, name: &str) -> Option<String>;
    /// All request headers, pseudo-headers (`:path`, `:method`, ...) included.
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Replaces (`Some`) or removes (`None`) a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);

    /// First value of a response header (`:status` included), in response callbacks.
    fn response_header(&self, name: &str) -> Option<String>;
    /// Replaces (`Some`) or removes (`None`) a response header, in the response-headers callback.
    fn set_response_header(&mut self, name: &str, value: Option<&str>);
    /// Bytes `start..start + size` of the buffered response body.
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `replaced` bytes of the buffered response body with `body`, in the
    /// response-body callback (`replaced`: the size buffered so far, to replace it all).
    fn set_response_body(&mut self, replaced: usize, body: &[u8]) -> Result<(), HostError>;

    /// Bytes `start..start + size` of the buffered request body.
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;

    /// Answers the downstream directly; the request does not reach the upstream.
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// Answers a gRPC call directly, trailers-only: `grpc-status`, `grpc-message` and metadata.
    fn send_grpc_response(&mut self, status: u32, message: &str, metadata: &[(&str, &str)]);
    /// Lets a paused request continue to the next filter.
    fn resume_request(&mut self);
    /// Lets a paused response continue toward the client.
    fn resume_response(&mut self);

    /// Reads a property (`["request", "path"]`, or a filter-state key set with `set_property`).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Writes filter state that later filters in the chain can read and clients cannot forge.
    fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<(), HostError>;

    /// Reads a value shared by every worker's VM of this `vm_id`, with its CAS token.
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes shared data; with `cas`, only if nobody wrote it since the read that returned `cas`.
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;

    /// Sends an HTTP request to a cluster; the answer arrives later with the returned token.
    fn dispatch_http_call(&mut self, call: &HttpCall<'_>) -> Result<u32, HostError>;
    /// Reads the answer to a dispatched call, inside the callback that announces it.
    fn http_call_response(&self, body_size: usize) -> HttpCallResponse;

    /// Sends a unary gRPC request (`service`/`method`, serialized message) to a cluster; the
    /// answer arrives later with the returned token.
    fn dispatch_grpc_call(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// Reads the serialized answer to a gRPC call, inside the callback that announces it.
    fn grpc_call_response(&self, size: usize) -> Vec<u8>;

    /// Asks for a periodic tick on the root context.
    fn set_tick_period(&mut self, period: Duration);

    /// An environment variable of the VM (Envoy `vm_config.environment_variables`).
    fn env_var(&self, name: &str) -> Option<String>;

    /// Writes a log line. Callers never pass secrets or token contents.
    fn log(&self, level: LogLevel, message: &str);
    /// Adds `by` to the counter `name`, defining it on first use.
    fn increment_counter(&mut self, name: &str, by: u64);
    /// Sets the gauge `name` to `value`, defining it on first use.
    fn set_gauge(&mut self, name: &str, value: u64);
}
