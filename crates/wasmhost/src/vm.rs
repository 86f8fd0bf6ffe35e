//! One module's VM: wasmtime instance, the hostcalls Envoy answers, and the callbacks Envoy makes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use wasmtime::{Caller, Engine, Instance, Linker, Memory, Store, TypedFunc};

use crate::abi::{self, buffer, map, metric, status};
use crate::stream::{Call, CallKind, LocalReply, Message, Stream};

/// Why a VM could not do what was asked: Envoy's answer to each is the same (the filter fails
/// closed), the message says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmError {
    /// The module's bytes are no module this host can run.
    Module(String),
    /// The module refused its configuration (`proxy_on_configure` returned false), with what it
    /// logged at warn and above.
    Refused(String),
    /// The VM trapped (a panic in the module, a missing hostcall): Envoy's VM is dead after it.
    Trap(String),
}

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmError::Module(m) => write!(f, "not a module this host runs: {m}"),
            VmError::Refused(m) => write!(f, "the module refused its configuration: {m}"),
            VmError::Trap(m) => write!(f, "the VM failed: {m}"),
        }
    }
}

impl std::error::Error for VmError {}

/// A module compiled once, from which any number of VMs start.
pub struct Module {
    engine: Engine,
    module: wasmtime::Module,
}

impl Module {
    pub fn new(bytes: &[u8]) -> Result<Module, VmError> {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, bytes).map_err(|e| VmError::Module(format!("{e:#}")))?;
        Ok(Module { engine, module })
    }

    /// The module compiled once per content and kept in `cache` (`<sha256>.cwasm`): a second run
    /// loads the machine code instead of compiling again. A cache entry that does not load (an
    /// other wasmtime, a damaged file) is compiled and written again; a cache that cannot be
    /// written only costs the compile.
    pub fn cached(bytes: &[u8], cache: &Path) -> Result<Module, VmError> {
        let engine = Engine::default();
        let digest: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        let path = cache.join(format!("{digest}.cwasm"));
        if path.is_file() {
            // SAFETY: the file is one this function wrote from `Module::serialize` for these exact
            // bytes (its name is their digest), in the user's own cache directory, trusted as the
            // binary itself is; wasmtime refuses an entry made by another version or config.
            if let Ok(module) = unsafe { wasmtime::Module::deserialize_file(&engine, &path) } {
                return Ok(Module { engine, module });
            }
        }
        let module = wasmtime::Module::new(&engine, bytes).map_err(|e| VmError::Module(format!("{e:#}")))?;
        if let Ok(compiled) = module.serialize() {
            let tmp = cache.join(format!("{digest}.{}.tmp", std::process::id()));
            let written = std::fs::create_dir_all(cache).and_then(|()| std::fs::write(&tmp, compiled)).and_then(|()| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(Module { engine, module })
    }
}

/// How Envoy runs the VM: what `vm_config` and the plugin's `configuration` say.
#[derive(Debug, Clone, Default)]
pub struct VmConfig {
    /// The plugin's `configuration` (what the module's `on_configure` reads).
    pub configuration: Vec<u8>,
    /// `vm_config.environment_variables`.
    pub env: Vec<(String, String)>,
}

/// A metric the module defined, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub counter: bool,
    pub value: i64,
}

/// What the process around the VMs shares: the clock (nanoseconds since the Unix epoch).
#[derive(Debug, Clone, Default)]
pub struct Clock(Rc<Cell<u64>>);

impl Clock {
    pub fn at(unix_nanos: u64) -> Clock {
        Clock(Rc::new(Cell::new(unix_nanos)))
    }
    pub fn now(&self) -> u64 {
        self.0.get()
    }
    pub fn set(&self, unix_nanos: u64) {
        self.0.set(unix_nanos);
    }
}

/// The VM's side of the host: everything a hostcall reads or writes.
struct State {
    memory: Option<Memory>,
    allocate: Option<TypedFunc<i32, i32>>,
    config: VmConfig,
    clock: Clock,
    stream: Rc<RefCell<Stream>>,
    /// Shared data (per VM id in Envoy: one VM here), with each key's CAS.
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    metrics: Vec<Metric>,
    logs: Vec<(i32, String)>,
    tick_ms: u32,
    /// The context a callback runs in (what calls made from it belong to).
    context: i32,
    calls: Vec<Call>,
    next_token: u32,
    /// The answer of the call being delivered: headers and body (HTTP), message (gRPC).
    call_headers: Vec<(String, String)>,
    call_body: Vec<u8>,
    /// `proxy_get_status` after a gRPC call closed.
    call_status: (u32, String),
    rng: u64,
}

/// A running VM: its root context configured.
pub struct Vm {
    store: Store<State>,
    instance: Instance,
    next_context: i32,
    last_tick: u64,
    /// The VM as it was once configured, to start each test case from ([`Vm::restore`]).
    snapshot: Option<Snapshot>,
}

/// What a VM holds between callbacks: its linear memory and the host's state for it.
struct Snapshot {
    memory: Vec<u8>,
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    metrics: Vec<Metric>,
    tick_ms: u32,
    rng: u64,
    next_context: i32,
    last_tick: u64,
}

/// The root context's id (Envoy's first context).
const ROOT: i32 = 1;

impl Vm {
    /// Starts a VM as Envoy does: instantiate, `_initialize`, root context, `on_vm_start`,
    /// `on_configure`.
    pub fn start(module: &Module, config: VmConfig, clock: Clock, stream: Rc<RefCell<Stream>>) -> Result<Vm, VmError> {
        let state = State {
            memory: None,
            allocate: None,
            config,
            clock,
            stream,
            shared: HashMap::new(),
            next_cas: 1,
            metrics: Vec::new(),
            logs: Vec::new(),
            tick_ms: 0,
            context: ROOT,
            calls: Vec::new(),
            next_token: 1,
            call_headers: Vec::new(),
            call_body: Vec::new(),
            call_status: (0, String::new()),
            rng: 0x9E37_79B9_7F4A_7C15,
        };
        let mut store = Store::new(&module.engine, state);
        let linker = linker(&module.engine).map_err(|e| VmError::Module(format!("{e:#}")))?;
        let instance = linker.instantiate(&mut store, &module.module).map_err(|e| VmError::Module(format!("{e:#}")))?;
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| VmError::Module("no exported memory".into()))?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .map_err(|e| VmError::Module(format!("{e:#}")))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);
        let last_tick = store.data().clock.now();
        let mut vm = Vm { store, instance, next_context: ROOT + 1, last_tick, snapshot: None };
        if let Ok(init) = vm.instance.get_typed_func::<(), ()>(&mut vm.store, "_initialize") {
            init.call(&mut vm.store, ()).map_err(trap)?;
        }
        vm.call::<(i32, i32), ()>("proxy_on_context_create", (ROOT, 0), ROOT)?;
        if vm.call::<(i32, i32), i32>("proxy_on_vm_start", (ROOT, 0), ROOT)? == 0 {
            return Err(VmError::Refused(vm.warnings()));
        }
        let size = i32::try_from(vm.store.data().config.configuration.len()).unwrap_or(i32::MAX);
        if vm.call::<(i32, i32), i32>("proxy_on_configure", (ROOT, size), ROOT)? == 0 {
            return Err(VmError::Refused(vm.warnings()));
        }
        Ok(vm)
    }

    /// Remembers the VM as it is now (between callbacks, the module's stack unwound).
    pub fn save(&mut self) {
        let Some(memory) = self.store.data().memory else { return };
        let data = self.store.data();
        self.snapshot = Some(Snapshot {
            memory: memory.data(&self.store).to_vec(),
            shared: data.shared.clone(),
            next_cas: data.next_cas,
            metrics: data.metrics.clone(),
            tick_ms: data.tick_ms,
            rng: data.rng,
            next_context: self.next_context,
            last_tick: self.last_tick,
        });
    }

    /// Puts the VM back as [`Vm::save`] found it: its memory (the pages it grew since zeroed;
    /// a VM's memory never shrinks), shared data, metrics, contexts, ticks.
    pub fn restore(&mut self) {
        let (Some(snapshot), Some(memory)) = (&self.snapshot, self.store.data().memory) else { return };
        let bytes = memory.data_mut(&mut self.store);
        let saved = snapshot.memory.len().min(bytes.len());
        bytes[..saved].copy_from_slice(&snapshot.memory[..saved]);
        bytes[saved..].fill(0);
        let data = self.store.data_mut();
        data.shared.clone_from(&snapshot.shared);
        data.next_cas = snapshot.next_cas;
        data.metrics.clone_from(&snapshot.metrics);
        data.tick_ms = snapshot.tick_ms;
        data.rng = snapshot.rng;
        data.calls.clear();
        data.logs.clear();
        self.next_context = snapshot.next_context;
        self.last_tick = snapshot.last_tick;
    }

    /// Calls an export as the callback of `context`.
    pub(crate) fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(&mut self, name: &str, params: P, context: i32) -> Result<R, VmError> {
        let f = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| VmError::Trap(format!("{name}: {e:#}")))?;
        self.store.data_mut().context = context;
        f.call(&mut self.store, params).map_err(trap)
    }

    pub(crate) fn new_context(&mut self) -> Result<i32, VmError> {
        let id = self.next_context;
        self.next_context += 1;
        self.call::<(i32, i32), ()>("proxy_on_context_create", (id, ROOT), id)?;
        Ok(id)
    }

    /// Calls dispatched and not yet answered, oldest first.
    pub(crate) fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.store.data_mut().calls)
    }

    /// Delivers an HTTP call's answer (`None`: the call failed, as Envoy reports a failure).
    pub(crate) fn answer_http(&mut self, call: &Call, answer: Option<Message>) -> Result<(), VmError> {
        let (headers, body) = answer.unwrap_or_default();
        let (n, size) = (len_i32(headers.len()), len_i32(body.len()));
        let data = self.store.data_mut();
        data.call_headers = headers;
        data.call_body = body;
        let token = i32::try_from(call.token).unwrap_or(i32::MAX);
        self.call::<(i32, i32, i32, i32, i32), ()>("proxy_on_http_call_response", (call.context, token, n, size, 0), call.context)
    }

    /// Delivers a gRPC call's answer: its message, or a failure with its gRPC status.
    pub(crate) fn answer_grpc(&mut self, call: &Call, answer: Result<Vec<u8>, (u32, String)>) -> Result<(), VmError> {
        let token = i32::try_from(call.token).unwrap_or(i32::MAX);
        match answer {
            Ok(message) => {
                let size = len_i32(message.len());
                self.store.data_mut().call_body = message;
                self.store.data_mut().call_status = (0, String::new());
                self.call::<(i32, i32, i32), ()>("proxy_on_grpc_receive", (call.context, token, size), call.context)?;
                self.call::<(i32, i32, i32), ()>("proxy_on_grpc_close", (call.context, token, 0), call.context)
            }
            Err((code, message)) => {
                self.store.data_mut().call_body = Vec::new();
                self.store.data_mut().call_status = (code, message);
                let code = i32::try_from(code).unwrap_or(2);
                self.call::<(i32, i32, i32), ()>("proxy_on_grpc_close", (call.context, token, code), call.context)
            }
        }
    }

    /// Runs the root context's ticks due by the clock's time (at most `max`).
    pub(crate) fn run_ticks(&mut self, max: u32) -> Result<u32, VmError> {
        let period = u64::from(self.store.data().tick_ms) * 1_000_000;
        let now = self.store.data().clock.now();
        if period == 0 {
            self.last_tick = now;
            return Ok(0);
        }
        let mut ran = 0;
        while now.saturating_sub(self.last_tick) >= period && ran < max {
            self.last_tick += period;
            self.call::<i32, ()>("proxy_on_tick", ROOT, ROOT)?;
            ran += 1;
        }
        if ran == max {
            self.last_tick = now;
        }
        Ok(ran)
    }

    /// Runs one tick of the root context now (what the module batches, counters among them,
    /// is written out).
    pub(crate) fn tick(&mut self) -> Result<(), VmError> {
        if self.store.data().tick_ms == 0 {
            return Ok(());
        }
        self.call::<i32, ()>("proxy_on_tick", ROOT, ROOT)
    }

    /// The metrics the module defined, with their values.
    pub fn metrics(&self) -> &[Metric] {
        &self.store.data().metrics
    }

    /// Log lines the module wrote (level 0 trace … 4 error), and forgets them.
    pub fn take_logs(&mut self) -> Vec<(i32, String)> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    fn warnings(&mut self) -> String {
        let lines: Vec<String> = self.take_logs().into_iter().filter(|(level, _)| *level >= 3).map(|(_, line)| line).collect();
        if lines.is_empty() {
            "no reason logged".into()
        } else {
            lines.join("; ")
        }
    }
}

fn trap(e: wasmtime::Error) -> VmError {
    VmError::Trap(format!("{e:#}"))
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn usize_of(v: i32) -> usize {
    // Pointers and sizes are u32 on wasm32; i32 is how they cross.
    usize::try_from(v.cast_unsigned()).unwrap_or(usize::MAX)
}

/// The bytes at `ptr..ptr+len` of the VM's memory.
fn read(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = caller.data().memory?;
    let (start, len) = (usize_of(ptr), usize_of(len));
    memory.data(&caller).get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
}

fn read_text(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> Option<String> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(caller: &mut Caller<'_, State>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory else { return false };
    let start = usize_of(ptr);
    match memory.data_mut(&mut *caller).get_mut(start..start.saturating_add(bytes.len())) {
        Some(slot) => {
            slot.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// Hands bytes to the module as Envoy does: memory the module allocates, its address and size
/// written at `ret_ptr` / `ret_size`.
fn give(caller: &mut Caller<'_, State>, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> wasmtime::Result<i32> {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let Some(allocate) = caller.data().allocate.clone() else { return Ok(status::BAD_ARGUMENT) };
        let ptr = allocate.call(&mut *caller, len_i32(bytes.len()))?;
        if !write(caller, ptr, bytes) {
            return Ok(status::BAD_ARGUMENT);
        }
        ptr
    };
    let ok = write(caller, ret_ptr, &ptr.to_le_bytes()) && write(caller, ret_size, &abi::len32(bytes.len()).to_le_bytes());
    Ok(if ok { status::OK } else { status::BAD_ARGUMENT })
}

/// The header map a hostcall names, in the stream or the call answer being delivered.
fn with_map<T>(caller: &mut Caller<'_, State>, kind: i32, f: impl FnOnce(&mut Vec<(String, String)>) -> T) -> Option<T> {
    let data = caller.data_mut();
    if kind == map::HTTP_CALL_RESPONSE_HEADERS || kind == map::GRPC_RECEIVE_INITIAL_METADATA {
        return Some(f(&mut data.call_headers));
    }
    if kind == map::HTTP_CALL_RESPONSE_TRAILERS || kind == map::GRPC_RECEIVE_TRAILING_METADATA {
        return Some(f(&mut Vec::new()));
    }
    let mut stream = data.stream.borrow_mut();
    let m = match kind {
        map::REQUEST_HEADERS => &mut stream.request_headers,
        map::REQUEST_TRAILERS => &mut stream.request_trailers,
        map::RESPONSE_HEADERS => &mut stream.response_headers,
        map::RESPONSE_TRAILERS => &mut stream.response_trailers,
        _ => return None,
    };
    Some(f(m))
}

fn next_random(state: &mut u64) -> u64 {
    // SplitMix64: a fixed seed, so a run's randomness is the same every time.
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

type R = wasmtime::Result<i32>;

/// Every import a meshward module makes, answered as Envoy 1.40 answers it.
#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut l: Linker<State> = Linker::new(engine);
    l.func_wrap("env", "proxy_log", |mut c: Caller<'_, State>, level: i32, ptr: i32, len: i32| -> R {
        let line = read_text(&mut c, ptr, len).unwrap_or_default();
        c.data_mut().logs.push((level, line));
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Caller<'_, State>, ret: i32| -> R {
        let now = c.data().clock.now();
        Ok(if write(&mut c, ret, &now.to_le_bytes()) { status::OK } else { status::BAD_ARGUMENT })
    })?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Caller<'_, State>, ms: i32| -> R {
        c.data_mut().tick_ms = ms.cast_unsigned();
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, State>, kind: i32, start: i32, size: i32, ret_ptr: i32, ret_size: i32| -> R {
            let whole = {
                let data = c.data();
                match kind {
                    buffer::PLUGIN_CONFIGURATION => data.config.configuration.clone(),
                    buffer::VM_CONFIGURATION => Vec::new(),
                    buffer::REQUEST_BODY => data.stream.borrow().request_buffer.clone(),
                    buffer::RESPONSE_BODY => data.stream.borrow().response_buffer.clone(),
                    buffer::HTTP_CALL_RESPONSE_BODY | buffer::GRPC_RECEIVE_BUFFER => data.call_body.clone(),
                    _ => return Ok(status::NOT_FOUND),
                }
            };
            let from = usize_of(start).min(whole.len());
            let to = from.saturating_add(usize_of(size)).min(whole.len());
            give(&mut c, &whole[from..to], ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, State>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let Some(bytes) = read(&mut c, ptr, len) else { return Ok(status::BAD_ARGUMENT) };
            let data = c.data();
            let mut stream = data.stream.borrow_mut();
            let target = match kind {
                buffer::REQUEST_BODY => &mut stream.request_buffer,
                buffer::RESPONSE_BODY => &mut stream.response_buffer,
                _ => return Ok(status::NOT_FOUND),
            };
            // As Envoy: (0, 0) prepends, start == len appends, (0, len) replaces the buffer.
            let from = usize_of(start).min(target.len());
            let to = from.saturating_add(usize_of(size)).min(target.len());
            target.splice(from..to, bytes);
            Ok(status::OK)
        },
    )?;
    l.func_wrap("env", "proxy_get_header_map_pairs", |mut c: Caller<'_, State>, kind: i32, ret_ptr: i32, ret_size: i32| -> R {
        match with_map(&mut c, kind, |m| abi::serialize_map(m)) {
            Some(bytes) => give(&mut c, &bytes, ret_ptr, ret_size),
            None => Ok(status::BAD_ARGUMENT),
        }
    })?;
    l.func_wrap("env", "proxy_set_header_map_pairs", |mut c: Caller<'_, State>, kind: i32, ptr: i32, len: i32| -> R {
        let Some(pairs) = read(&mut c, ptr, len).and_then(|b| abi::deserialize_map(&b)) else { return Ok(status::BAD_ARGUMENT) };
        Ok(with_map(&mut c, kind, |m| *m = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()).map_or(status::BAD_ARGUMENT, |()| status::OK))
    })?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, State>, kind: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> R {
            let key = read_text(&mut c, kp, kl).unwrap_or_default().to_ascii_lowercase();
            // Envoy answers with the first of repeated headers.
            let found = with_map(&mut c, kind, |m| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
            match found {
                Some(Some(value)) => give(&mut c, value.as_bytes(), ret_ptr, ret_size),
                Some(None) => Ok(status::NOT_FOUND),
                None => Ok(status::BAD_ARGUMENT),
            }
        },
    )?;
    l.func_wrap("env", "proxy_replace_header_map_value", |mut c: Caller<'_, State>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
        let key = read_text(&mut c, kp, kl).unwrap_or_default().to_ascii_lowercase();
        let value = read_text(&mut c, vp, vl).unwrap_or_default();
        let done = with_map(&mut c, kind, |m| match m.iter().position(|(k, _)| *k == key) {
            Some(at) => {
                m[at].1 = value;
                let mut i = at + 1;
                while i < m.len() {
                    if m[i].0 == key {
                        m.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            None => m.push((key, value)),
        });
        Ok(done.map_or(status::BAD_ARGUMENT, |()| status::OK))
    })?;
    l.func_wrap("env", "proxy_add_header_map_value", |mut c: Caller<'_, State>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
        let key = read_text(&mut c, kp, kl).unwrap_or_default().to_ascii_lowercase();
        let value = read_text(&mut c, vp, vl).unwrap_or_default();
        Ok(with_map(&mut c, kind, |m| m.push((key, value))).map_or(status::BAD_ARGUMENT, |()| status::OK))
    })?;
    l.func_wrap("env", "proxy_remove_header_map_value", |mut c: Caller<'_, State>, kind: i32, kp: i32, kl: i32| -> R {
        let key = read_text(&mut c, kp, kl).unwrap_or_default().to_ascii_lowercase();
        Ok(with_map(&mut c, kind, |m| m.retain(|(k, _)| *k != key)).map_or(status::BAD_ARGUMENT, |()| status::OK))
    })?;
    l.func_wrap("env", "proxy_get_property", |mut c: Caller<'_, State>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> R {
        let Some(path) = read(&mut c, pp, pl) else { return Ok(status::BAD_ARGUMENT) };
        let path = String::from_utf8_lossy(path.strip_suffix(&[0]).unwrap_or(&path)).into_owned();
        let value = c.data().stream.borrow().properties.get(&path).cloned();
        match value {
            Some(v) => give(&mut c, &v, ret_ptr, ret_size),
            None => Ok(status::NOT_FOUND),
        }
    })?;
    l.func_wrap("env", "proxy_set_property", |mut c: Caller<'_, State>, pp: i32, pl: i32, vp: i32, vl: i32| -> R {
        let (Some(path), Some(value)) = (read(&mut c, pp, pl), read(&mut c, vp, vl)) else { return Ok(status::BAD_ARGUMENT) };
        let path = String::from_utf8_lossy(path.strip_suffix(&[0]).unwrap_or(&path)).into_owned();
        c.data().stream.borrow_mut().properties.insert(path, value);
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_get_shared_data", |mut c: Caller<'_, State>, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32| -> R {
        let key = read_text(&mut c, kp, kl).unwrap_or_default();
        let Some((value, cas)) = c.data().shared.get(&key).cloned() else { return Ok(status::NOT_FOUND) };
        if !write(&mut c, ret_cas, &cas.to_le_bytes()) {
            return Ok(status::BAD_ARGUMENT);
        }
        give(&mut c, &value, ret_ptr, ret_size)
    })?;
    l.func_wrap("env", "proxy_set_shared_data", |mut c: Caller<'_, State>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
        let key = read_text(&mut c, kp, kl).unwrap_or_default();
        let value = read(&mut c, vp, vl).unwrap_or_default();
        let data = c.data_mut();
        let cas = cas.cast_unsigned();
        if cas != 0 && data.shared.get(&key).is_some_and(|(_, current)| *current != cas) {
            return Ok(status::CAS_MISMATCH);
        }
        data.next_cas += 1;
        let next = data.next_cas;
        data.shared.insert(key, (value, next));
        Ok(status::OK)
    })?;
    for name in ["proxy_register_shared_queue", "proxy_dequeue_shared_queue", "proxy_enqueue_shared_queue"] {
        l.func_wrap("env", name, |_: Caller<'_, State>, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) })?;
    }
    l.func_wrap("env", "proxy_resolve_shared_queue", |_: Caller<'_, State>, _: i32, _: i32, _: i32, _: i32, _: i32| -> R {
        Ok(status::UNIMPLEMENTED)
    })?;
    l.func_wrap("env", "proxy_continue_stream", |c: Caller<'_, State>, kind: i32| -> R {
        let mut stream = c.data().stream.borrow_mut();
        match kind {
            abi::stream::REQUEST => stream.request_resumed = true,
            abi::stream::RESPONSE => stream.response_resumed = true,
            _ => return Ok(status::BAD_ARGUMENT),
        }
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_close_stream", |c: Caller<'_, State>, _kind: i32| -> R {
        c.data().stream.borrow_mut().reset = true;
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, State>, code: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, grpc: i32| -> R {
            let details = read_text(&mut c, dp, dl).unwrap_or_default();
            let body = read(&mut c, bp, bl).unwrap_or_default();
            let headers = read(&mut c, hp, hl).and_then(|b| abi::deserialize_map(&b)).unwrap_or_default();
            let reply = LocalReply {
                status: u16::try_from(code).unwrap_or(500),
                details,
                headers: headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
                body,
                grpc_status: u32::try_from(grpc).ok(),
            };
            let mut stream = c.data().stream.borrow_mut();
            if stream.local_reply.is_none() {
                stream.local_reply = Some(reply);
            }
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, State>, up: i32, ul: i32, hp: i32, hl: i32, bp: i32, bl: i32, _tp: i32, _tl: i32, timeout: i32, ret: i32| -> R {
            let cluster = read_text(&mut c, up, ul).unwrap_or_default();
            let headers = read(&mut c, hp, hl).and_then(|b| abi::deserialize_map(&b)).unwrap_or_default();
            let body = read(&mut c, bp, bl).unwrap_or_default();
            let kind = CallKind::Http { headers, body };
            dispatch(&mut c, cluster, kind, timeout, ret)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: Caller<'_, State>, up: i32, ul: i32, sp: i32, sl: i32, mp: i32, ml: i32, _ip: i32, _il: i32, msgp: i32, msgl: i32, timeout: i32, ret: i32| -> R {
            let target = read(&mut c, up, ul).unwrap_or_default();
            let service = read_text(&mut c, sp, sl).unwrap_or_default();
            let method = read_text(&mut c, mp, ml).unwrap_or_default();
            let message = read(&mut c, msgp, msgl).unwrap_or_default();
            let kind = CallKind::Grpc { service, method, message };
            dispatch(&mut c, crate::stream::grpc_cluster(&target), kind, timeout, ret)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: Caller<'_, State>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) },
    )?;
    l.func_wrap("env", "proxy_grpc_send", |_: Caller<'_, State>, _: i32, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) })?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        l.func_wrap("env", name, |mut c: Caller<'_, State>, token: i32| -> R {
            let token = token.cast_unsigned();
            let calls = &mut c.data_mut().calls;
            let before = calls.len();
            calls.retain(|call| call.token != token);
            Ok(if calls.len() < before { status::OK } else { status::NOT_FOUND })
        })?;
    }
    l.func_wrap("env", "proxy_get_status", |mut c: Caller<'_, State>, ret_code: i32, ret_ptr: i32, ret_size: i32| -> R {
        let (code, message) = c.data().call_status.clone();
        if !write(&mut c, ret_code, &code.to_le_bytes()) {
            return Ok(status::BAD_ARGUMENT);
        }
        give(&mut c, message.as_bytes(), ret_ptr, ret_size)
    })?;
    l.func_wrap("env", "proxy_set_effective_context", |mut c: Caller<'_, State>, context: i32| -> R {
        c.data_mut().context = context;
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: Caller<'_, State>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> R { Ok(status::NOT_FOUND) },
    )?;
    l.func_wrap("env", "proxy_done", |_: Caller<'_, State>| -> R { Ok(status::OK) })?;
    l.func_wrap("env", "proxy_define_metric", |mut c: Caller<'_, State>, kind: i32, np: i32, nl: i32, ret: i32| -> R {
        let name = read_text(&mut c, np, nl).unwrap_or_default();
        let metrics = &mut c.data_mut().metrics;
        let id = match metrics.iter().position(|m| m.name == name) {
            Some(id) => id,
            None => {
                metrics.push(Metric { name, counter: kind == metric::COUNTER, value: 0 });
                metrics.len() - 1
            }
        };
        Ok(if write(&mut c, ret, &abi::len32(id).to_le_bytes()) { status::OK } else { status::BAD_ARGUMENT })
    })?;
    l.func_wrap("env", "proxy_increment_metric", |mut c: Caller<'_, State>, id: i32, by: i64| -> R {
        match c.data_mut().metrics.get_mut(usize_of(id)) {
            Some(m) => {
                m.value = m.value.saturating_add(by);
                Ok(status::OK)
            }
            None => Ok(status::NOT_FOUND),
        }
    })?;
    l.func_wrap("env", "proxy_record_metric", |mut c: Caller<'_, State>, id: i32, value: i64| -> R {
        match c.data_mut().metrics.get_mut(usize_of(id)) {
            Some(m) if m.counter => Ok(status::BAD_ARGUMENT),
            Some(m) => {
                m.value = value;
                Ok(status::OK)
            }
            None => Ok(status::NOT_FOUND),
        }
    })?;
    // WASI, as Envoy answers it: environment variables from vm_config, stdout/stderr to the log.
    l.func_wrap("wasi_snapshot_preview1", "environ_sizes_get", |mut c: Caller<'_, State>, count: i32, size: i32| -> R {
        let env = &c.data().config.env;
        let n = abi::len32(env.len());
        let bytes = abi::len32(env.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
        Ok(if write(&mut c, count, &n.to_le_bytes()) && write(&mut c, size, &bytes.to_le_bytes()) { 0 } else { 28 })
    })?;
    l.func_wrap("wasi_snapshot_preview1", "environ_get", |mut c: Caller<'_, State>, ptrs: i32, buf: i32| -> R {
        let env = c.data().config.env.clone();
        let mut at = buf;
        for (i, (k, v)) in env.iter().enumerate() {
            let entry = format!("{k}={v}\0");
            let slot = ptrs.wrapping_add(len_i32(i * 4));
            if !write(&mut c, slot, &at.to_le_bytes()) || !write(&mut c, at, entry.as_bytes()) {
                return Ok(28);
            }
            at = at.wrapping_add(len_i32(entry.len()));
        }
        Ok(0)
    })?;
    l.func_wrap("wasi_snapshot_preview1", "fd_write", |mut c: Caller<'_, State>, _fd: i32, iovs: i32, n: i32, written: i32| -> R {
        let mut text = Vec::new();
        for i in 0..usize_of(n).min(1024) {
            let Some(iov) = read(&mut c, iovs.wrapping_add(len_i32(i * 8)), 8) else { return Ok(28) };
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            text.extend(read(&mut c, ptr, len).unwrap_or_default());
        }
        let total = abi::len32(text.len());
        c.data_mut().logs.push((4, String::from_utf8_lossy(&text).trim_end().to_string()));
        Ok(if write(&mut c, written, &total.to_le_bytes()) { 0 } else { 28 })
    })?;
    l.func_wrap("wasi_snapshot_preview1", "random_get", |mut c: Caller<'_, State>, ptr: i32, len: i32| -> R {
        let mut bytes = Vec::with_capacity(usize_of(len));
        while bytes.len() < usize_of(len) {
            bytes.extend_from_slice(&next_random(&mut c.data_mut().rng).to_le_bytes());
        }
        bytes.truncate(usize_of(len));
        Ok(if write(&mut c, ptr, &bytes) { 0 } else { 28 })
    })?;
    l.func_wrap("wasi_snapshot_preview1", "proc_exit", |_: Caller<'_, State>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!("the module exited with {code}")))
    })?;
    Ok(l)
}

/// Records a call the module dispatched; the exchange answers it once the callback returns.
fn dispatch(c: &mut Caller<'_, State>, cluster: String, kind: CallKind, timeout_ms: i32, ret: i32) -> R {
    let data = c.data_mut();
    let token = data.next_token;
    data.next_token += 1;
    let context = data.context;
    data.calls.push(Call { token, context, cluster, kind, timeout_ms: timeout_ms.cast_unsigned() });
    Ok(if write(c, ret, &token.to_le_bytes()) { status::OK } else { status::BAD_ARGUMENT })
}
