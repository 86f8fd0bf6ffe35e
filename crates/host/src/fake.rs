use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use crate::{Host, HostError, HttpCall, HttpCallResponse, LogLevel};

/// A response a filter sent with [`Host::send_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SentResponse {
    /// The first value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP call a filter dispatched with [`Host::dispatch_http_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchedCall {
    pub token: u32,
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// Proxy-wide shared data: clone it into several fakes to play several worker threads.
pub type SharedStore = Rc<RefCell<HashMap<String, (Vec<u8>, u32)>>>;

/// An in-memory [`Host`] that records what a filter did, for host-side tests.
#[derive(Debug)]
pub struct FakeHost {
    pub now: SystemTime,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub shared: SharedStore,
    /// When set, the next `n` compare-and-swap writes fail as if another worker won the race.
    pub cas_failures: u32,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    pub env: HashMap<String, String>,
    pub sent: Option<SentResponse>,
    pub resumed: u32,
    pub responses_resumed: u32,
    pub calls: Vec<DispatchedCall>,
    /// When set, `dispatch_http_call` fails with this reason.
    pub refuse_calls: Option<String>,
    /// What `http_call_response` returns.
    pub call_response: HttpCallResponse,
    /// gRPC calls dispatched: (token, cluster, service/method, message).
    pub grpc_calls: Vec<(u32, String, String, Vec<u8>)>,
    /// What `grpc_call_response` returns.
    pub grpc_response: Vec<u8>,
    pub tick_period: Option<Duration>,
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, u64>,
    logs: RefCell<Vec<(LogLevel, String)>>,
    next_token: u32,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            request_headers: Vec::new(),
            request_body: Vec::new(),
            response_headers: Vec::new(),
            response_body: Vec::new(),
            shared: SharedStore::default(),
            cas_failures: 0,
            properties: HashMap::new(),
            env: HashMap::new(),
            sent: None,
            resumed: 0,
            responses_resumed: 0,
            calls: Vec::new(),
            refuse_calls: None,
            call_response: HttpCallResponse::default(),
            grpc_calls: Vec::new(),
            grpc_response: Vec::new(),
            tick_period: None,
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            logs: RefCell::new(Vec::new()),
            next_token: 1,
        }
    }
}

impl FakeHost {
    /// A fake holding a request with these headers (`:method`, `:path` and the like included).
    pub fn with_request(headers: &[(&str, &str)]) -> Self {
        FakeHost {
            request_headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_string()))
                .collect(),
            ..FakeHost::default()
        }
    }

    /// Starts a new request on the same host (same clock, counters, env), as the next
    /// request on a worker would.
    pub fn next_request(&mut self, headers: &[(&str, &str)]) {
        let fresh = FakeHost::with_request(headers);
        self.request_headers = fresh.request_headers;
        self.request_body.clear();
        self.properties.clear();
        self.sent = None;
        self.resumed = 0;
    }

    /// Every log line written so far.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }

    /// The value of a counter (0 when never incremented).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

impl Host for FakeHost {
    fn now(&self) -> SystemTime {
        self.now
    }

    fn request_header(&self, name: &str) -> Option<String> {
        self.request_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        self.request_headers.clone()
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        self.request_headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            self.request_headers
                .push((name.to_ascii_lowercase(), value.to_string()));
        }
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.response_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        self.response_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            self.response_headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let end = start.checked_add(size)?.min(self.response_body.len());
        self.response_body.get(start..end).map(<[u8]>::to_vec)
    }

    fn set_response_body(&mut self, replaced: usize, body: &[u8]) -> Result<(), HostError> {
        let end = replaced.min(self.response_body.len());
        self.response_body.splice(..end, body.iter().copied());
        Ok(())
    }

    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let end = start.checked_add(size)?.min(self.request_body.len());
        self.request_body.get(start..end).map(<[u8]>::to_vec)
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.shared.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        let mut store = self.shared.borrow_mut();
        let current = store.get(key).map(|(_, c)| *c);
        if cas.is_some() && self.cas_failures > 0 {
            self.cas_failures -= 1;
            return Err(HostError::CasMismatch);
        }
        if let (Some(expected), Some(current)) = (cas, current) {
            if expected != current {
                return Err(HostError::CasMismatch);
            }
        }
        let next = current.unwrap_or(0).wrapping_add(1);
        store.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.sent = Some(SentResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }

    fn send_grpc_response(&mut self, status: u32, message: &str, metadata: &[(&str, &str)]) {
        let mut headers: Vec<(String, String)> = vec![("grpc-status".into(), status.to_string()), ("grpc-message".into(), message.into())];
        headers.extend(metadata.iter().map(|(n, v)| ((*n).to_string(), (*v).to_string())));
        self.sent = Some(SentResponse { status: 200, headers, body: Vec::new() });
    }

    fn resume_request(&mut self) {
        self.resumed += 1;
    }

    fn resume_response(&mut self) {
        self.responses_resumed += 1;
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key: Vec<String> = path.iter().map(|p| (*p).to_string()).collect();
        self.properties.get(&key).cloned()
    }

    fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        let key = path.iter().map(|p| (*p).to_string()).collect();
        self.properties.insert(key, value.to_vec());
        Ok(())
    }

    fn dispatch_http_call(&mut self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        if let Some(why) = &self.refuse_calls {
            return Err(HostError::Refused(why.clone()));
        }
        let token = self.next_token;
        self.next_token += 1;
        self.calls.push(DispatchedCall {
            token,
            cluster: call.cluster.to_string(),
            authority: call.authority.to_string(),
            path: call.path.to_string(),
        });
        Ok(token)
    }

    fn http_call_response(&self, _body_size: usize) -> HttpCallResponse {
        self.call_response.clone()
    }

    fn dispatch_grpc_call(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        _timeout: Duration,
    ) -> Result<u32, HostError> {
        if let Some(why) = &self.refuse_calls {
            return Err(HostError::Refused(why.clone()));
        }
        let token = self.next_token;
        self.next_token += 1;
        self.grpc_calls.push((token, cluster.to_string(), format!("{service}/{method}"), message.to_vec()));
        Ok(token)
    }

    fn grpc_call_response(&self, _size: usize) -> Vec<u8> {
        self.grpc_response.clone()
    }

    fn set_tick_period(&mut self, period: Duration) {
        self.tick_period = Some(period);
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn increment_counter(&mut self, name: &str, by: u64) {
        *self.counters.entry(name.to_string()).or_insert(0) += by;
    }

    fn set_gauge(&mut self, name: &str, value: u64) {
        self.gauges.insert(name.to_string(), value);
    }
}
