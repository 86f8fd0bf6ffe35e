//! [`Host`] over the proxy-wasm hostcalls. Compiled for wasm32 only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

use crate::{Host, HostError, HttpCall, HttpCallResponse, LogLevel};

thread_local! {
    /// Metric ids by name: `define_metric` once per VM, not per request.
    static METRICS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

/// The real proxy, reached through proxy-wasm hostcalls.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyWasmHost;

fn refused(status: proxy_wasm::types::Status) -> HostError {
    HostError::Refused(format!("{status:?}"))
}

// The SDK's string accessors for header maps (`get_map`, `get_map_value`) `unwrap` a UTF-8
// conversion of every value: one client header with a byte such as 0xFF would abort the VM.
// Headers are therefore always read as bytes here, and a value that is not UTF-8 is treated
// as absent, which every policy handles as a failed check (fail closed).

fn utf8_map(map: MapType) -> Vec<(String, String)> {
    hostcalls::get_map_bytes(map)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| Some((name, String::from_utf8(value).ok()?)))
        .collect()
}

fn utf8_value(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
}

impl Host for ProxyWasmHost {
    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn request_header(&self, name: &str) -> Option<String> {
        utf8_value(MapType::HttpRequestHeaders, name)
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        utf8_map(MapType::HttpRequestHeaders)
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn response_header(&self, name: &str) -> Option<String> {
        utf8_value(MapType::HttpResponseHeaders, name)
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, start, size).ok().flatten()
    }

    fn set_response_body(&mut self, replaced: usize, body: &[u8]) -> Result<(), HostError> {
        hostcalls::set_buffer(BufferType::HttpResponseBody, 0, replaced, body).map_err(refused)
    }

    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, start, size).ok().flatten()
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            proxy_wasm::types::Status::CasMismatch => HostError::CasMismatch,
            other => refused(other),
        })
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body));
    }

    fn send_grpc_response(&mut self, status: u32, message: &str, metadata: &[(&str, &str)]) {
        use proxy_wasm::types::GrpcStatusCode as C;
        let code = match status {
            1 => C::Cancelled,
            3 => C::InvalidArgument,
            4 => C::DeadlineExceeded,
            5 => C::NotFound,
            6 => C::AlreadyExists,
            7 => C::PermissionDenied,
            8 => C::ResourceExhausted,
            9 => C::FailedPrecondition,
            10 => C::Aborted,
            11 => C::OutOfRange,
            12 => C::Unimplemented,
            13 => C::Internal,
            14 => C::Unavailable,
            15 => C::DataLoss,
            16 => C::Unauthenticated,
            // Never an OK: an unknown code is still a failure.
            _ => C::Unknown,
        };
        let metadata: Vec<(&str, &[u8])> = metadata.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let _ = hostcalls::send_grpc_response(code, Some(message), metadata);
    }

    fn resume_request(&mut self) {
        let _ = hostcalls::resume_http_request();
    }

    fn resume_response(&mut self) {
        let _ = hostcalls::resume_http_response();
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        hostcalls::set_property(path.to_vec(), Some(value)).map_err(refused)
    }

    fn dispatch_http_call(&mut self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        let mut headers = vec![
            (":method", call.method),
            (":path", call.path),
            (":authority", call.authority),
        ];
        headers.extend(call.headers.iter().copied());
        hostcalls::dispatch_http_call(call.cluster, headers, call.body, vec![], call.timeout)
            .map_err(refused)
    }

    fn http_call_response(&self, body_size: usize) -> HttpCallResponse {
        let headers = utf8_map(MapType::HttpCallResponseHeaders);
        let status = headers
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| v.parse().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        HttpCallResponse {
            status,
            headers,
            body,
        }
    }

    fn dispatch_grpc_call(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        let target = crate::grpc_target(cluster).ok_or_else(|| HostError::Refused(format!("cluster name {cluster:?} cannot be a gRPC target")))?;
        hostcalls::dispatch_grpc_call(&target, service, method, vec![], Some(message), timeout).map_err(refused)
    }

    fn grpc_call_response(&self, size: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size).ok().flatten().unwrap_or_default()
    }

    fn set_tick_period(&mut self, period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }

    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => proxy_wasm::types::LogLevel::Debug,
            LogLevel::Info => proxy_wasm::types::LogLevel::Info,
            LogLevel::Warn => proxy_wasm::types::LogLevel::Warn,
            LogLevel::Error => proxy_wasm::types::LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }

    fn increment_counter(&mut self, name: &str, by: u64) {
        if let Some(id) = metric_id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }

    fn set_gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = metric_id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// A metric's id, defined on first use (names are never shared between kinds).
fn metric_id(kind: MetricType, name: &str) -> Option<u32> {
    METRICS.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(id) = m.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        m.insert(name.to_string(), id);
        Some(id)
    })
}
