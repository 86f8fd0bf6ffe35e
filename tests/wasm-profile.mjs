// Where a request's time goes inside a meshward module, outside Envoy: a proxy-wasm host in
// Node (V8, the engine Envoy embeds) that configures a module as Envoy would, drives the same
// request through it many times, counts every hostcall per request and profiles the VM.
//
//   node tests/wasm-profile.mjs SPEC.json
//
// SPEC: {"module": "dist/meshward.wasm", "configuration": {...} | "text", "requests": 20000,
//        "headers": [[":method", "GET"], [":path", "/"], ...], "properties": {"name": "value"},
//        "profile": true}
// Prints one JSON object: hostcalls per request (by name), microseconds per request (all, and
// inside the module), the counters after a final tick, the module's functions with the most self time (names need a module built with its name section, as
// `make profile` builds them), and the local responses sent (a scenario that denies is an error).
import { readFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { argv, exit, hrtime } from "node:process";

const spec = JSON.parse(readFileSync(argv[2], "utf8"));
const OK = 0, NOT_FOUND = 1, CAS_MISMATCH = 8;
const REQUEST_HEADERS = 0, RESPONSE_HEADERS = 2;
const VM_CONFIGURATION = 6, PLUGIN_CONFIGURATION = 7;

const calls = new Map();
const count = (name) => calls.set(name, (calls.get(name) ?? 0) + 1);
let instance, memory;
const u8 = () => new Uint8Array(memory.buffer);
const view = () => new DataView(memory.buffer);
const text = (ptr, len) => Buffer.from(memory.buffer, ptr, len).toString("utf8");
const bytes = (ptr, len) => Buffer.from(Buffer.from(memory.buffer, ptr, len));

// Hands bytes to the module the way Envoy does: memory the module allocates, then its address.
function give(data, retPtr, retSize) {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const ptr = buf.length ? instance.exports.proxy_on_memory_allocate(buf.length) : 0;
  if (buf.length) u8().set(buf, ptr);
  view().setUint32(retPtr, ptr, true);
  view().setUint32(retSize, buf.length, true);
  return OK;
}

function serializeMap(pairs) {
  const parts = [Buffer.alloc(4 + pairs.length * 8)];
  parts[0].writeUInt32LE(pairs.length, 0);
  pairs.forEach(([k, v], i) => {
    parts[0].writeUInt32LE(Buffer.byteLength(k), 4 + i * 8);
    parts[0].writeUInt32LE(Buffer.byteLength(v), 8 + i * 8);
  });
  for (const [k, v] of pairs) parts.push(Buffer.from(k), Buffer.from([0]), Buffer.from(v), Buffer.from([0]));
  return Buffer.concat(parts);
}

const configuration = Buffer.from(typeof spec.configuration === "string" ? spec.configuration : JSON.stringify(spec.configuration));
const shared = new Map(); // key -> [value, cas]
let cas = 1;
const metrics = [];
const totals = [];
const sent = [];
let maps, properties;

const env = {
  proxy_log(level, ptr, len) {
    count("proxy_log");
    if (level >= 4) console.error(`module log: ${text(ptr, len)}`);
    return OK;
  },
  proxy_get_current_time_nanoseconds(ret) {
    count("proxy_get_current_time_nanoseconds");
    view().setBigUint64(ret, BigInt(Date.now()) * 1000000n, true);
    return OK;
  },
  proxy_get_buffer_bytes(type, start, size, retPtr, retSize) {
    count("proxy_get_buffer_bytes");
    // Sizes arrive as signed i32 (the SDK asks for "all" with u32::MAX).
    if (type === PLUGIN_CONFIGURATION) return give(configuration.subarray(start >>> 0, (start >>> 0) + (size >>> 0)), retPtr, retSize);
    if (type === VM_CONFIGURATION) return give(Buffer.alloc(0), retPtr, retSize);
    return NOT_FOUND;
  },
  proxy_get_header_map_pairs(type, retPtr, retSize) {
    count("proxy_get_header_map_pairs");
    return give(serializeMap(maps[type] ?? []), retPtr, retSize);
  },
  proxy_get_header_map_value(type, kPtr, kLen, retPtr, retSize) {
    count("proxy_get_header_map_value");
    const key = text(kPtr, kLen);
    const found = (maps[type] ?? []).find(([k]) => k === key);
    return found ? give(found[1], retPtr, retSize) : NOT_FOUND;
  },
  proxy_replace_header_map_value(type, kPtr, kLen, vPtr, vLen) {
    count("proxy_replace_header_map_value");
    const key = text(kPtr, kLen);
    maps[type] = (maps[type] ?? []).filter(([k]) => k !== key).concat([[key, text(vPtr, vLen)]]);
    return OK;
  },
  proxy_add_header_map_value(type, kPtr, kLen, vPtr, vLen) {
    count("proxy_add_header_map_value");
    (maps[type] ??= []).push([text(kPtr, kLen), text(vPtr, vLen)]);
    return OK;
  },
  proxy_remove_header_map_value(type, kPtr, kLen) {
    count("proxy_remove_header_map_value");
    const key = text(kPtr, kLen);
    maps[type] = (maps[type] ?? []).filter(([k]) => k !== key);
    return OK;
  },
  proxy_get_property(pPtr, pLen, retPtr, retSize) {
    count("proxy_get_property");
    const value = properties.get(text(pPtr, pLen));
    return value === undefined ? NOT_FOUND : give(value, retPtr, retSize);
  },
  proxy_set_property(pPtr, pLen, vPtr, vLen) {
    count("proxy_set_property");
    properties.set(text(pPtr, pLen), bytes(vPtr, vLen));
    return OK;
  },
  proxy_get_shared_data(kPtr, kLen, retPtr, retSize, casPtr) {
    count("proxy_get_shared_data");
    const entry = shared.get(text(kPtr, kLen));
    if (!entry) return NOT_FOUND;
    view().setUint32(casPtr, entry[1], true);
    return give(entry[0], retPtr, retSize);
  },
  proxy_set_shared_data(kPtr, kLen, vPtr, vLen, expected) {
    count("proxy_set_shared_data");
    const key = text(kPtr, kLen);
    const entry = shared.get(key);
    if (expected && entry && entry[1] !== expected) return CAS_MISMATCH;
    shared.set(key, [bytes(vPtr, vLen), ++cas]);
    return OK;
  },
  proxy_define_metric(type, nPtr, nLen, retId) {
    count("proxy_define_metric");
    metrics.push(text(nPtr, nLen));
    view().setUint32(retId, metrics.length - 1, true);
    return OK;
  },
  proxy_increment_metric(id, offset) {
    count("proxy_increment_metric");
    totals[id] = (totals[id] ?? 0n) + BigInt(offset);
    return OK;
  },
  proxy_record_metric(id, value) {
    count("proxy_record_metric");
    totals[id] = BigInt(value);
    return OK;
  },
  proxy_send_local_response(status, dPtr, dLen, bPtr, bLen) {
    count("proxy_send_local_response");
    sent.push({ status, body: text(bPtr, bLen).slice(0, 300) });
    return OK;
  },
  proxy_set_tick_period_milliseconds() {
    count("proxy_set_tick_period_milliseconds");
    return OK;
  },
};
const wasi = {
  random_get(ptr, len) {
    count("random_get");
    u8().set(crypto.getRandomValues(new Uint8Array(len)), ptr);
    return 0;
  },
  environ_sizes_get(countPtr, sizePtr) {
    view().setUint32(countPtr, 0, true);
    view().setUint32(sizePtr, 0, true);
    return 0;
  },
  environ_get: () => 0,
  clock_time_get(id, precision, ret) {
    count("clock_time_get");
    view().setBigUint64(ret, BigInt(Date.now()) * 1000000n, true);
    return 0;
  },
  fd_write() {
    count("fd_write");
    return 0;
  },
  proc_exit(code) {
    throw new Error(`module exited with ${code}`);
  },
  sched_yield: () => 0,
};

const module = new WebAssembly.Module(readFileSync(spec.module));
const imports = { env: {}, wasi_snapshot_preview1: {} };
for (const { module: from, name } of WebAssembly.Module.imports(module)) {
  const table = from === "env" ? env : wasi;
  imports[from][name] = table[name] ?? (() => {
    throw new Error(`hostcall ${from}.${name} is not provided by this host`);
  });
}
instance = new WebAssembly.Instance(module, imports);
memory = instance.exports.memory;
instance.exports._initialize?.();

const ROOT = 1;
instance.exports.proxy_on_context_create(ROOT, 0);
if (!instance.exports.proxy_on_vm_start(ROOT, 0)) throw new Error("vm start refused");
if (!instance.exports.proxy_on_configure(ROOT, configuration.length)) throw new Error("configuration refused");

const requestHeaders = spec.headers;
const responseHeaders = [[":status", "200"], ["content-type", "application/json"], ["content-length", "11"]];
let next = ROOT + 1;
function request() {
  const id = next++;
  maps = { [REQUEST_HEADERS]: requestHeaders.map((p) => [...p]), [RESPONSE_HEADERS]: responseHeaders.map((p) => [...p]) };
  // Filter state an earlier filter set (path segments joined by NUL), and the peer address.
  properties = new Map([["source\0address", Buffer.from("127.0.0.1:40000")], ...Object.entries(spec.properties ?? {}).map(([k, v]) => [k, Buffer.from(v)])]);
  instance.exports.proxy_on_context_create(id, ROOT);
  instance.exports.proxy_on_request_headers(id, requestHeaders.length, 1);
  instance.exports.proxy_on_response_headers(id, responseHeaders.length, 0);
  instance.exports.proxy_on_response_body(id, 11, 1);
  instance.exports.proxy_on_log(id);
  instance.exports.proxy_on_done(id);
  instance.exports.proxy_on_delete(id);
}

// Warm-up (V8 tiers hot functions up), then hostcalls of one request, then the timed loop.
const n = spec.requests ?? 20000;
for (let i = 0; i < Math.min(n, 2000); i++) request();
calls.clear();
request();
const perRequest = Object.fromEntries([...calls].sort((a, b) => b[1] - a[1]));
const session = new Session();
if (spec.profile) {
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.setSamplingInterval", { interval: 50 });
  await session.post("Profiler.start");
}
const started = hrtime.bigint();
for (let i = 0; i < n; i++) request();
const micros = Number(hrtime.bigint() - started) / 1000 / n;
let top = [];
let moduleShare = null;
if (spec.profile) {
  const { profile } = await session.post("Profiler.stop");
  // Self time of the module's own functions (V8 names them wasm://...); the rest is this
  // host's JavaScript, which Envoy does in C++, and is left out of the list.
  const self = new Map();
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  let inModule = 0;
  for (const id of profile.samples) {
    const { functionName, url } = byId.get(id).callFrame;
    if (!url.startsWith("wasm://")) continue;
    inModule += 1;
    self.set(functionName, (self.get(functionName) ?? 0) + 1);
  }
  moduleShare = inModule / profile.samples.length;
  top = [...self].sort((a, b) => b[1] - a[1]).slice(0, spec.top ?? 40).map(([name, s]) => [name, +(100 * s / inModule).toFixed(1)]);
}
// A tick writes what the module counted in the VM; every request must be in the counters.
instance.exports.proxy_on_tick(ROOT);
const counters = Object.fromEntries(metrics.map((name, id) => [name, Number(totals[id] ?? 0n)]));
const denied = sent.length;
console.log(JSON.stringify({ module: spec.module, micros_per_request: +micros.toFixed(2), hostcalls_per_request: Object.values(perRequest).reduce((a, b) => a + b, 0),
  requests: next - ROOT - 1, counters, hostcalls: perRequest, module_micros_per_request: moduleShare === null ? null : +(micros * moduleShare).toFixed(2), self_time_percent: top, local_responses: denied, first_response: sent[0] }, null, 1));
exit(denied ? 1 : 0);
