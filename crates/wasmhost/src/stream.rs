//! One HTTP exchange through a chain of filters, driven as Envoy's filter manager drives it:
//! request headers and body through each filter in order, calls the filters dispatch answered,
//! the service's answer back through them in reverse, then the log callbacks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::abi::action;
use crate::vm::{Clock, Metric, Module, Vm, VmConfig, VmError};

/// Header pairs in order, names lowercase (pseudo-headers first).
pub type Headers = Vec<(String, String)>;

/// An HTTP message: its headers and body.
pub type Message = (Headers, Vec<u8>);

/// What the filters see of the stream: Envoy's header maps and buffers, filter state.
#[derive(Debug, Default)]
pub struct Stream {
    pub request_headers: Vec<(String, String)>,
    pub request_trailers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub response_trailers: Vec<(String, String)>,
    /// The body a filter is shown (`HttpRequestBody`): what it buffered so far.
    pub request_buffer: Vec<u8>,
    pub response_buffer: Vec<u8>,
    /// Properties by path (segments joined by NUL): the connection's, and filter state set by
    /// the filters.
    pub properties: HashMap<String, Vec<u8>>,
    pub local_reply: Option<LocalReply>,
    pub request_resumed: bool,
    pub response_resumed: bool,
    pub reset: bool,
}

/// A reply a filter sent itself (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub details: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub grpc_status: Option<u32>,
}

/// A call a filter dispatched (JWKS fetch, fleet engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub token: u32,
    pub context: i32,
    pub cluster: String,
    pub kind: CallKind,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    Http { headers: Vec<(String, String)>, body: Vec<u8> },
    Grpc { service: String, method: String, message: Vec<u8> },
}

/// How the calls the filters make are answered (a test's fixtures).
pub trait Calls {
    /// An HTTP call's answer (headers with `:status`, body); `None`: the call fails.
    fn http(&mut self, call: &Call) -> Option<Message>;
    /// A gRPC call's answer message, or its failure (gRPC status, message).
    fn grpc(&mut self, call: &Call) -> Result<Vec<u8>, (u32, String)>;
}

/// Every call fails (no cluster answers): what a module does with no JWKS or fleet engine.
pub struct NoCalls;

impl Calls for NoCalls {
    fn http(&mut self, _: &Call) -> Option<(Vec<(String, String)>, Vec<u8>)> {
        None
    }
    fn grpc(&mut self, call: &Call) -> Result<Vec<u8>, (u32, String)> {
        Err((14, format!("no answer for {} in this test", call.cluster)))
    }
}

/// The cluster a serialized `GrpcService` target names (what `meshward_host::grpc_target`
/// writes); a target that is no such message is taken as the bare cluster name, as Envoy does.
pub fn grpc_cluster(target: &[u8]) -> String {
    let field = |bytes: &[u8], tag: u8| -> Option<Vec<u8>> {
        let (&t, rest) = bytes.split_first()?;
        let (&len, rest) = rest.split_first()?;
        (t == tag && len < 0x80).then(|| rest.get(..usize::from(len)).map(<[u8]>::to_vec))?
    };
    field(target, 0x0a)
        .and_then(|envoy_grpc| field(&envoy_grpc, 0x0a))
        .map_or_else(|| String::from_utf8_lossy(target).into_owned(), |name| String::from_utf8_lossy(&name).into_owned())
}

/// A request as the client sent it (pseudo-headers included), the body in the chunks Envoy
/// hands the filters.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Bytes per body chunk (0: the whole body in one).
    pub chunk: usize,
    /// Connection and stream properties (`source.address`, the peer certificate's URI SAN).
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
}

/// What the service answers when the request reaches it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream { headers: vec![(":status".into(), "200".into()), ("content-type".into(), "application/json".into())], body: b"{}".to_vec() }
    }
}

/// What happened to one exchange.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// A filter answered instead of the service (during the request or the response).
    pub local_reply: Option<LocalReply>,
    /// What reached the service: headers and body; `None` when nothing did.
    pub upstream_request: Option<Message>,
    /// The status, headers and body the client got.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The stream was reset after the service's headers went out (an answer cut).
    pub reset: bool,
    /// The request never left a filter: it held the stream with no call left to answer.
    pub held: bool,
    /// Calls the filters made, in order.
    pub calls: Vec<Call>,
}

/// The filters of one Envoy listener: a VM per filter, started once, any number of exchanges.
pub struct Chain {
    vms: Vec<Vm>,
    stream: Rc<RefCell<Stream>>,
    clock: Clock,
    saved_clock: u64,
}

/// One filter of a chain: its module and how it is configured.
pub struct Filter<'a> {
    pub module: &'a Module,
    pub config: VmConfig,
}

/// Ticks one step of the clock may run per VM (a case that jumps a day does not tick a million times).
const MAX_TICKS: u32 = 1000;

impl Chain {
    /// Starts each filter's VM (configuration refused or failed: that filter's error).
    pub fn start(filters: Vec<Filter<'_>>, clock: Clock, calls: &mut dyn Calls) -> Result<Chain, (usize, VmError)> {
        let stream = Rc::new(RefCell::new(Stream::default()));
        let mut vms = Vec::with_capacity(filters.len());
        for (i, f) in filters.into_iter().enumerate() {
            let mut vm = Vm::start(f.module, f.config, clock.clone(), Rc::clone(&stream)).map_err(|e| (i, e))?;
            answer_calls(&mut vm, calls, &mut Vec::new()).map_err(|e| (i, e))?;
            vms.push(vm);
        }
        let saved_clock = clock.now();
        Ok(Chain { vms, stream, clock, saved_clock })
    }

    /// Remembers every VM and the clock as they are now.
    pub fn save(&mut self) {
        self.vms.iter_mut().for_each(Vm::save);
        self.saved_clock = self.clock.now();
    }

    /// Every VM and the clock as [`Chain::save`] left them: each test case starts from the
    /// configured filters, as on a proxy that just started.
    pub fn restore(&mut self) {
        self.vms.iter_mut().for_each(Vm::restore);
        self.clock.set(self.saved_clock);
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Moves the clock on, running the ticks that fall due (and answering their calls).
    pub fn advance(&mut self, by: Duration, calls: &mut dyn Calls) -> Result<(), VmError> {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.clock.set(self.clock.now().saturating_add(nanos));
        self.run_ticks(calls)
    }

    fn run_ticks(&mut self, calls: &mut dyn Calls) -> Result<(), VmError> {
        for vm in &mut self.vms {
            vm.run_ticks(MAX_TICKS)?;
            answer_calls(vm, calls, &mut Vec::new())?;
        }
        Ok(())
    }

    /// One tick of every VM now, its calls answered: what the modules batch is written out.
    pub fn tick_now(&mut self, calls: &mut dyn Calls) -> Result<(), VmError> {
        for vm in &mut self.vms {
            vm.tick()?;
            answer_calls(vm, calls, &mut Vec::new())?;
        }
        Ok(())
    }

    /// The metrics of every VM, by filter.
    pub fn metrics(&self) -> Vec<&[Metric]> {
        self.vms.iter().map(Vm::metrics).collect()
    }

    /// The log lines every VM wrote since the last call, by filter.
    pub fn take_logs(&mut self) -> Vec<Vec<(i32, String)>> {
        self.vms.iter_mut().map(Vm::take_logs).collect()
    }

    /// One request through the chain, the service's answer back through it.
    pub fn exchange(&mut self, request: &Request, upstream: &Upstream, calls: &mut dyn Calls) -> Result<Outcome, VmError> {
        self.run_ticks(calls)?;
        *self.stream.borrow_mut() = Stream {
            request_headers: request.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect(),
            properties: request.properties.iter().map(|(path, v)| (path.join("\0"), v.clone())).collect(),
            ..Stream::default()
        };
        let mut outcome = Outcome::default();
        let mut contexts = Vec::with_capacity(self.vms.len());
        for vm in &mut self.vms {
            contexts.push(vm.new_context()?);
        }
        let body = request.body.clone().unwrap_or_default();
        let chunks = chunks(&body, request.chunk);
        let mut entered = 0;
        let reached = self.request_path(&contexts, &chunks, request.body.is_some(), calls, &mut outcome, &mut entered)?;
        if reached {
            let stream = self.stream.borrow();
            outcome.upstream_request = Some((stream.request_headers.clone(), stream.request_buffer.clone()));
            drop(stream);
            self.response_path(&contexts, upstream, calls, &mut outcome)?;
        }
        let reply = self.stream.borrow().local_reply.clone();
        if let Some(reply) = reply {
            if !reached {
                self.reply_path(&contexts[..entered], &reply, calls, &mut outcome)?;
            } else if !outcome.reset {
                outcome.status = reply.status;
                outcome.headers = reply.headers.clone();
                outcome.body = reply.body.clone();
            }
            outcome.local_reply = Some(reply);
        }
        for (vm, &context) in self.vms.iter_mut().zip(&contexts) {
            vm.call::<i32, ()>("proxy_on_log", context, context)?;
            vm.call::<i32, i32>("proxy_on_done", context, context)?;
            vm.call::<i32, ()>("proxy_on_delete", context, context)?;
        }
        Ok(outcome)
    }

    /// The request through each filter in order; whether it reached the service.
    /// `entered`: how many filters got the request's headers (the others never see this stream).
    fn request_path(&mut self, contexts: &[i32], chunks: &[&[u8]], has_body: bool, calls: &mut dyn Calls, outcome: &mut Outcome, entered: &mut usize) -> Result<bool, VmError> {
        // The body as it leaves each filter (a filter may rewrite what it buffered).
        let mut passed: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        for (vm, &context) in self.vms.iter_mut().zip(contexts) {
            {
                let mut stream = self.stream.borrow_mut();
                stream.request_resumed = false;
                stream.request_buffer.clear();
            }
            *entered += 1;
            let n = i32::try_from(self.stream.borrow().request_headers.len()).unwrap_or(i32::MAX);
            let headers_go = vm.call::<(i32, i32, i32), i32>("proxy_on_request_headers", (context, n, i32::from(!has_body)), context)? == action::CONTINUE;
            answer_calls(vm, calls, &mut outcome.calls)?;
            if self.stream.borrow().local_reply.is_some() {
                return Ok(false);
            }
            let mut out = Vec::with_capacity(passed.len());
            let mut body_went = !has_body;
            let last = passed.len().saturating_sub(1);
            for (i, chunk) in passed.iter().enumerate() {
                self.stream.borrow_mut().request_buffer.extend_from_slice(chunk);
                let size = i32::try_from(self.stream.borrow().request_buffer.len()).unwrap_or(i32::MAX);
                let end = i32::from(i == last);
                let go = vm.call::<(i32, i32, i32), i32>("proxy_on_request_body", (context, size, end), context)? == action::CONTINUE;
                answer_calls(vm, calls, &mut outcome.calls)?;
                if self.stream.borrow().local_reply.is_some() {
                    return Ok(false);
                }
                if go || self.stream.borrow().request_resumed {
                    out.push(std::mem::take(&mut self.stream.borrow_mut().request_buffer));
                    body_went = i == last;
                }
            }
            let resumed = self.stream.borrow().request_resumed;
            if resumed && !body_went {
                // A filter that held the body and then resumed lets what it buffered go.
                out.push(std::mem::take(&mut self.stream.borrow_mut().request_buffer));
                body_went = true;
            }
            // Headers alone go when the filter continues them; with a body, when the whole
            // body has gone on (a body that continues takes the held headers with it).
            let went = if has_body { body_went } else { headers_go || resumed };
            if !went {
                outcome.held = true;
                return Ok(false);
            }
            passed = out;
        }
        self.stream.borrow_mut().request_buffer = passed.concat();
        Ok(true)
    }

    /// The service's answer through each filter in reverse order.
    fn response_path(&mut self, contexts: &[i32], upstream: &Upstream, calls: &mut dyn Calls, outcome: &mut Outcome) -> Result<(), VmError> {
        {
            let mut stream = self.stream.borrow_mut();
            stream.response_headers = upstream.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
            stream.properties.insert("response\0code_details".into(), b"via_upstream".to_vec());
            let code = header(&stream.response_headers, ":status").unwrap_or_default();
            outcome.status = code.parse().unwrap_or(0);
            stream.properties.insert("response\0code".into(), code.into_bytes());
        }
        let has_body = !upstream.body.is_empty();
        let mut body = upstream.body.clone();
        let mut headers_out = true;
        for (vm, &context) in self.vms.iter_mut().zip(contexts).rev() {
            self.stream.borrow_mut().response_resumed = false;
            let go = encode_headers(vm, &self.stream, context, !has_body, calls, &mut outcome.calls)?;
            if self.stream.borrow().local_reply.is_some() {
                return Ok(());
            }
            headers_out &= go;
            if has_body {
                body = encode_body(vm, &self.stream, context, body, calls, &mut outcome.calls)?;
                let stream = self.stream.borrow();
                if stream.local_reply.is_some() || stream.reset {
                    // Headers already on their way to the client: Envoy can only cut the stream.
                    outcome.reset = headers_out || stream.reset;
                    return Ok(());
                }
            }
        }
        let stream = self.stream.borrow();
        outcome.status = header(&stream.response_headers, ":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        outcome.headers = stream.response_headers.clone();
        outcome.body = body;
        Ok(())
    }

    /// A local reply sent while the request was on its way, through the response callbacks of
    /// the filters the request reached (`contexts`), in reverse order, as Envoy encodes it: a
    /// rate limit before the refusing filter counts the refusal, headers it adds reach the
    /// client. A wasm filter the request never reached has no context in Envoy and is skipped
    /// (its log callback still runs). A filter refusing the reply again changes nothing.
    fn reply_path(&mut self, contexts: &[i32], reply: &LocalReply, calls: &mut dyn Calls, outcome: &mut Outcome) -> Result<(), VmError> {
        let grpc = header(&self.stream.borrow().request_headers, "content-type").is_some_and(|t| is_grpc(&t));
        // Envoy answers a gRPC request trailers-only: HTTP 200, the status in grpc-status, the
        // body as grpc-message.
        let (status, mut body) = if grpc { (200, Vec::new()) } else { (reply.status, reply.body.clone()) };
        {
            let mut stream = self.stream.borrow_mut();
            let mut headers = vec![(":status".to_string(), status.to_string())];
            if grpc {
                headers.push(("content-type".into(), "application/grpc".into()));
                headers.push(("grpc-status".into(), reply.grpc_status.unwrap_or_else(|| http_to_grpc(reply.status)).to_string()));
                if !reply.body.is_empty() {
                    headers.push(("grpc-message".into(), percent_encode(&reply.body)));
                }
            }
            headers.extend(reply.headers.iter().cloned());
            if !body.is_empty() {
                headers.push(("content-length".into(), body.len().to_string()));
            }
            stream.response_headers = headers;
            stream.properties.insert("response\0code".into(), status.to_string().into_bytes());
            stream.properties.insert("response\0code_details".into(), reply.details.clone().into_bytes());
        }
        for (vm, &context) in self.vms[..contexts.len()].iter_mut().zip(contexts).rev() {
            encode_headers(vm, &self.stream, context, body.is_empty(), calls, &mut outcome.calls)?;
            if !body.is_empty() {
                body = encode_body(vm, &self.stream, context, body, calls, &mut outcome.calls)?;
            }
        }
        let stream = self.stream.borrow();
        outcome.status = status;
        outcome.headers = stream.response_headers.iter().filter(|(k, _)| k != ":status").cloned().collect();
        outcome.body = body;
        Ok(())
    }
}

/// One filter's response-headers callback on the stream's response headers, its calls answered;
/// whether it let them go on.
fn encode_headers(vm: &mut Vm, stream: &RefCell<Stream>, context: i32, end_of_stream: bool, calls: &mut dyn Calls, seen: &mut Vec<Call>) -> Result<bool, VmError> {
    let n = i32::try_from(stream.borrow().response_headers.len()).unwrap_or(i32::MAX);
    let go = vm.call::<(i32, i32, i32), i32>("proxy_on_response_headers", (context, n, i32::from(end_of_stream)), context)? == action::CONTINUE;
    answer_calls(vm, calls, seen)?;
    Ok(go)
}

/// One filter's response-body callback on the whole `body` (end of stream), its calls answered;
/// the body as the filter left it.
fn encode_body(vm: &mut Vm, stream: &RefCell<Stream>, context: i32, body: Vec<u8>, calls: &mut dyn Calls, seen: &mut Vec<Call>) -> Result<Vec<u8>, VmError> {
    let size = i32::try_from(body.len()).unwrap_or(i32::MAX);
    stream.borrow_mut().response_buffer = body;
    vm.call::<(i32, i32, i32), i32>("proxy_on_response_body", (context, size, 1), context)?;
    answer_calls(vm, calls, seen)?;
    Ok(std::mem::take(&mut stream.borrow_mut().response_buffer))
}

/// A gRPC content type, as Envoy tells a gRPC request (`application/grpc`, `+proto`, `;…`).
fn is_grpc(content_type: &str) -> bool {
    content_type.strip_prefix("application/grpc").is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// The gRPC status Envoy gives a local reply that names none (its HTTP-to-gRPC mapping).
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// grpc-message's percent-encoding (gRPC's: every byte outside printable ASCII, and `%`).
fn percent_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if (0x20..=0x7e).contains(&b) && b != b'%' { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn chunks(body: &[u8], size: usize) -> Vec<&[u8]> {
    if body.is_empty() || size == 0 {
        return vec![body];
    }
    body.chunks(size).collect()
}

/// Answers every call the VM dispatched, and those its answers dispatch in turn.
fn answer_calls(vm: &mut Vm, calls: &mut dyn Calls, seen: &mut Vec<Call>) -> Result<(), VmError> {
    for _ in 0..64 {
        let pending = vm.take_calls();
        if pending.is_empty() {
            return Ok(());
        }
        for call in pending {
            match &call.kind {
                CallKind::Http { .. } => vm.answer_http(&call, calls.http(&call))?,
                CallKind::Grpc { .. } => vm.answer_grpc(&call, calls.grpc(&call))?,
            }
            seen.push(call);
        }
    }
    Err(VmError::Trap("more than 64 rounds of calls for one callback".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_request_is_told_by_its_content_type_and_answered_in_grpc_terms() {
        for (t, grpc) in [("application/grpc", true), ("application/grpc+proto", true), ("application/grpc;charset=utf-8", true),
                          ("application/grpc-web", false), ("application/json", false)] {
            assert_eq!(is_grpc(t), grpc, "{t}");
        }
        assert_eq!([http_to_grpc(401), http_to_grpc(403), http_to_grpc(429), http_to_grpc(418)], [16, 7, 14, 2]);
        assert_eq!(percent_encode("a 100% \"ok\"\n".as_bytes()), "a 100%25 \"ok\"%0A");
    }

    #[test]
    fn a_grpc_target_names_its_cluster() {
        let target = meshward_like_target("meshward-fleet");
        assert_eq!(grpc_cluster(&target), "meshward-fleet");
        assert_eq!(grpc_cluster(b"plain"), "plain");
    }

    fn meshward_like_target(cluster: &str) -> Vec<u8> {
        let authority = b"meshward-fleet";
        let mut inner = vec![0x0a, u8::try_from(cluster.len()).unwrap()];
        inner.extend_from_slice(cluster.as_bytes());
        inner.extend_from_slice(&[0x12, u8::try_from(authority.len()).unwrap()]);
        inner.extend_from_slice(authority);
        let mut out = vec![0x0a, u8::try_from(inner.len()).unwrap()];
        out.extend(inner);
        out
    }
}
