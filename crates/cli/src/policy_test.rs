//! `meshward test POLICY CASES…`: cases — this request, from this caller, gets this verdict —
//! run in the real modules (the `.wasm` files `render` deploys, with the configuration `render`
//! writes) inside the proxy-wasm host of `meshward-wasmhost`, and their verdicts checked.
//!
//! A case file (YAML):
//!
//! ```yaml
//! keys:                      # test signing keys (ES256), each trusted by the jwt provider it names
//!   demo: {}
//! env: { ORDERS_PAYMENTS_WEBHOOK_SECRET: test-secret }   # the VMs' environment (secrets)
//! cases:
//!   - name: the owner reads an order
//!     request:
//!       path: /tenants/acme/orders/42
//!       token: { key: demo, claims: { sub: alice, tenant: acme, scope: "orders:read" } }
//!     expect: { status: 200 }
//! ```
//!
//! Each case starts from the filters as configured (a proxy that just started): state one case
//! leaves (a limit's count) is not seen by the next; `repeat: N` sends a case's request N times
//! and checks the last answer. The calls the modules make — a remote JWKS fetch, the fleet
//! engine — are answered as the file's and the case's `jwks` and `fleet` say ([`crate::case_calls`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use meshward_runtime::HOLD_HEADERS_ENV;
use meshward_wasmhost::{CallKind, Calls, Chain, Clock, Filter, LocalReply, Module, Outcome, Request, Upstream, VmConfig};
use p256::ecdsa::signature::Signer;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::case_calls::{CaseCalls, FleetAnswers, JwksAnswer, ServedJwks};
use crate::policy::Policy;
use crate::render::{self, Form};

/// The clock a case runs at unless it sets `at` (2026-01-01T00:00:00Z): runs are repeatable.
const DEFAULT_AT: u64 = 1_767_225_600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    keys: BTreeMap<String, TestKey>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// The clock of every case that does not set its own, in seconds since the Unix epoch
    /// [default: 2026-01-01T00:00:00Z, so runs repeat].
    #[serde(default)]
    at: Option<u64>,
    /// How a provider's remote JWKS answers (`served`: the test key's; `unavailable`; `{status: N}`).
    #[serde(default)]
    jwks: JwksAnswer,
    /// The fleet engine's answers, call by call ([`FleetAnswers`]).
    #[serde(default)]
    fleet: FleetAnswers,
    cases: Vec<Case>,
}

/// A signing key made for the run; the jwt provider of the same name trusts it (and only it).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestKey {
    /// The `kid` tokens carry [default: `meshward-test-<provider>`].
    pub(crate) kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    request: Option<CaseRequest>,
    /// What the service answers when the request reaches it [default: 200, `{}`].
    #[serde(default)]
    upstream: Option<CaseUpstream>,
    #[serde(default)]
    expect: Option<Expect>,
    /// The request sent this many times; the last answer is checked.
    #[serde(default = "one")]
    repeat: u32,
    /// The clock, in seconds since the Unix epoch.
    #[serde(default)]
    at: Option<u64>,
    /// Instead of `request` and `expect`: requests in order on the same proxy, each checked
    /// (what one leaves — a count, a seen delivery, a stored answer — the next one meets).
    #[serde(default)]
    steps: Vec<CaseStep>,
    /// The remote JWKS's answer in this case, from the proxy's start on [default: the file's].
    #[serde(default)]
    jwks: Option<JwksAnswer>,
    /// The fleet engine's answers in this case (each key set overrides the file's).
    #[serde(default)]
    fleet: Option<FleetAnswers>,
}

/// One request of a case's `steps`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseStep {
    request: CaseRequest,
    #[serde(default)]
    upstream: Option<CaseUpstream>,
    expect: Expect,
    #[serde(default = "one")]
    repeat: u32,
    #[serde(default)]
    at: Option<u64>,
}

/// A request to send and check: a case's own, or one of its steps.
struct StepRef<'a> {
    request: &'a CaseRequest,
    upstream: Option<&'a CaseUpstream>,
    expect: &'a Expect,
    repeat: u32,
    at: Option<u64>,
}

impl Case {
    fn steps(&self) -> Result<Vec<StepRef<'_>>, String> {
        match (&self.request, &self.expect, self.steps.is_empty()) {
            (Some(request), Some(expect), true) => {
                Ok(vec![StepRef { request, upstream: self.upstream.as_ref(), expect, repeat: self.repeat.max(1), at: self.at }])
            }
            (None, None, false) if self.upstream.is_none() && self.repeat == 1 => Ok(self
                .steps
                .iter()
                .map(|s| StepRef { request: &s.request, upstream: s.upstream.as_ref(), expect: &s.expect, repeat: s.repeat.max(1), at: s.at.or(self.at) })
                .collect()),
            _ => Err("a case has `request` and `expect` (with `upstream`, `repeat`), or `steps`, each with its own".into()),
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The body as text.
    #[serde(default)]
    body: Option<String>,
    /// The body as JSON (sent with `content-type: application/json` unless a header says else).
    #[serde(default)]
    json: Option<Value>,
    /// The body from a file (any bytes: a gzip body, a multipart form), relative to the case file.
    #[serde(default)]
    body_file: Option<PathBuf>,
    /// Bytes per body chunk as the filters receive it [default: the whole body at once].
    #[serde(default)]
    chunk: Option<usize>,
    #[serde(default)]
    token: Option<Token>,
    /// The caller's address (`source.address`) [default: 127.0.0.1:40000].
    #[serde(default)]
    source: Option<String>,
    /// The calling workload's SPIFFE ID (the URI SAN of its client certificate).
    #[serde(default)]
    peer: Option<String>,
}

fn get() -> String {
    "GET".into()
}

/// A token signed with a test key: `iss`, `aud` (the provider's first audience), `iat` and
/// `exp` (an hour) are filled in unless `claims` sets them; a claim set to null is left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    key: String,
    #[serde(default)]
    claims: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseUpstream {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    json: Option<Value>,
}

fn ok() -> u16 {
    200
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The status the client gets.
    #[serde(default)]
    status: Option<u16>,
    /// The deny reason (the answer's `reason`, `meshward-reason` for gRPC); `null`: allowed.
    #[serde(default)]
    reason: Option<String>,
    /// Whether the request reaches the service.
    #[serde(default)]
    reached_service: Option<bool>,
    /// The stage that refused it (`jwt`, `schema`, `ownership`, …), as the decision counters name it.
    #[serde(default)]
    stage: Option<String>,
    /// Headers the service must see, with these values.
    #[serde(default)]
    service_sees: BTreeMap<String, String>,
    /// Headers the service must not see.
    #[serde(default)]
    service_does_not_see: Vec<String>,
    /// Headers the client's answer must carry, with these values.
    #[serde(default)]
    client_sees: BTreeMap<String, String>,
    /// The gRPC status of the answer (a gRPC request refused is answered HTTP 200 with it).
    #[serde(default)]
    grpc_status: Option<u32>,
    /// Whether the service's answer is cut after its headers went out (Envoy resets the stream
    /// when a filter refuses an answer it already let start).
    #[serde(default)]
    reset: Option<bool>,
}

/// One case's result.
pub struct CaseResult {
    pub file: String,
    pub name: String,
    /// What went wrong; empty when the case passed.
    pub failures: Vec<String>,
    /// What happened, in one line (status, reason).
    pub got: String,
    /// Each request as the filters received it (the minted token included) with how many
    /// times it was sent, in order (a case's steps), and what happened to the last.
    pub sent: Vec<(Request, u32)>,
    pub outcome: Option<Outcome>,
    /// The decision counters the case moved (`meshward_<stage>_<decision>_total.route.….reason.…`):
    /// which stage decided what, on which rule, as the module counts it.
    pub decisions: Vec<String>,
}

/// How the cases run.
pub struct Options<'a> {
    pub form: Form,
    pub modules: &'a Path,
    /// Where compiled modules are kept between runs (`None`: compiled every run).
    pub cache: Option<&'a Path>,
}

/// Where `meshward test` keeps compiled modules: `$MESHWARD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/meshward/wasm`, else `~/.cache/meshward/wasm`; `None` without any of them.
pub fn cache_dir() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("MESHWARD_CACHE_DIR")
        .or_else(|| set("XDG_CACHE_HOME").map(|d| d.join("meshward").join("wasm")))
        .or_else(|| set("HOME").map(|d| d.join(".cache").join("meshward").join("wasm")))
}

/// Each test key by the provider that trusts it, with that provider's configuration.
pub(crate) type TestKeys = BTreeMap<String, (Key, Value)>;

/// A test key: its signing key and the JWKS that trusts it.
pub(crate) struct Key {
    kid: String,
    signing: p256::ecdsa::SigningKey,
    jwks: String,
}

fn b64url(bytes: &[u8]) -> Result<String, String> {
    Base64UrlSafeNoPadding::encode_to_string(bytes).map_err(|e| e.to_string())
}

impl Key {
    /// A key derived from the provider's name: the same tokens every run.
    fn new(provider: &str, kid: String) -> Result<Key, String> {
        let seed = Sha256::digest(format!("meshward test key {provider}").as_bytes());
        let signing = p256::ecdsa::SigningKey::from_slice(&seed).map_err(|e| format!("keys.{provider}: {e}"))?;
        let point = signing.verifying_key().to_sec1_point(false);
        let point = point.as_bytes();
        if point.len() != 65 {
            return Err("an uncompressed P-256 point has 65 bytes".into());
        }
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64url(&point[1..33])?, "y": b64url(&point[33..])?}]})
        .to_string();
        Ok(Key { kid, signing, jwks })
    }

    pub(crate) fn sign(&self, claims: &Map<String, Value>) -> Result<String, String> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}).to_string();
        let input = format!("{}.{}", b64url(header.as_bytes())?, b64url(Value::Object(claims.clone()).to_string().as_bytes())?);
        let signature: p256::ecdsa::Signature = self.signing.sign(input.as_bytes());
        Ok(format!("{input}.{}", b64url(&signature.to_bytes())?))
    }
}

/// The policy with each provider named in `keys` trusting that test key alone; the keys, and
/// the JWKS each remote provider's cluster serves (a remote provider keeps fetching its keys,
/// and is answered the test key's JWKS; a local one gets it inline).
pub(crate) fn with_test_keys(policy: &Policy, keys: &BTreeMap<String, TestKey>, file: &str) -> Result<(Policy, TestKeys, ServedJwks), String> {
    let mut policy = policy.clone();
    let mut made = BTreeMap::new();
    let mut served = ServedJwks::new();
    if keys.is_empty() {
        return Ok((policy, made, served));
    }
    let Some(stage) = policy.stages.iter_mut().find(|s| s.kind == "jwt") else {
        return Err(format!("{file}: keys: the policy has no jwt stage to trust them"));
    };
    let Some(providers) = stage.config.get_mut("providers").and_then(Value::as_object_mut) else {
        return Err(format!("{file}: keys: the jwt stage has no providers"));
    };
    let names: Vec<String> = providers.keys().cloned().collect();
    for (name, spec) in keys {
        let Some(provider) = providers.get_mut(name).and_then(Value::as_object_mut) else {
            return Err(format!("{file}: keys.{name}: the jwt stage has no provider `{name}` (it has: {})", names.join(", ")));
        };
        if provider.contains_key("from_native_jwt_authn") {
            return Err(format!("{file}: keys.{name}: the provider takes tokens Envoy's jwt_authn verified, which this host does not run"));
        }
        let key = Key::new(name, spec.kid.clone().unwrap_or_else(|| format!("meshward-test-{name}")))?;
        match provider.get("remote_jwks").and_then(|r| r.pointer("/http_uri/cluster")).and_then(Value::as_str) {
            Some(cluster) => {
                if let Some(other) = served.insert(cluster.to_string(), key.jwks.clone()) {
                    if other != key.jwks {
                        return Err(format!("{file}: keys.{name}: another provider with a test key fetches its JWKS from cluster {cluster} too"));
                    }
                }
            }
            None => {
                provider.insert("local_jwks".into(), json!({"inline_string": key.jwks}));
            }
        }
        made.insert(name.clone(), (key, Value::Object(provider.clone())));
    }
    Ok((policy, made, served))
}

/// A run: every case's result in order, and the JWKS each test key was trusted by.
pub struct Run {
    pub results: Vec<CaseResult>,
    pub jwks: BTreeMap<String, String>,
}

/// The policy's filters, as `render` deploys them in `options.form`, running in the host with
/// `env` as the VMs' environment, at `at` (Unix seconds); saved, so each run restores them.
pub fn start(policy: &Policy, options: &Options<'_>, env: &[(String, String)], at: u64, calls: &mut dyn Calls) -> Result<Chain, String> {
    let plugins = render::wasm_plugins(policy, options.form, options.modules)?;
    let mut modules = Vec::with_capacity(plugins.len());
    for p in &plugins {
        let bytes = std::fs::read(&p.filename).map_err(|e| format!("{}: {e} (build the modules: make build; or --modules DIR)", p.filename))?;
        let module = match options.cache {
            Some(cache) => Module::cached(&bytes, cache),
            None => Module::new(&bytes),
        };
        modules.push(module.map_err(|e| format!("{}: {e}", p.filename))?);
    }
    let mut vm_env: Vec<(String, String)> = vec![(HOLD_HEADERS_ENV.into(), "true".into())];
    vm_env.extend(env.iter().cloned());
    let filters = plugins
        .iter()
        .zip(&modules)
        .map(|(p, module)| Filter { module, config: VmConfig { configuration: p.configuration.clone().into_bytes(), env: vm_env.clone() } })
        .collect();
    let mut chain = Chain::start(filters, Clock::at(at.saturating_mul(1_000_000_000)), calls)
        .map_err(|(i, e)| format!("{}: {e}", plugins.get(i).map_or("?", |p| p.filter_name.as_str())))?;
    chain.save();
    Ok(chain)
}

/// Runs every case of every file.
pub fn run(policy: &Policy, files: &[PathBuf], options: &Options<'_>) -> Result<Run, String> {
    let mut results = Vec::new();
    let mut jwks = BTreeMap::new();
    for path in files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
        let cases: CaseFile = serde_yaml::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        let (file_results, keys) = run_file(policy, &cases, &file, options)?;
        for (name, (key, _)) in &keys {
            jwks.insert(name.clone(), key.jwks.clone());
        }
        results.extend(file_results);
    }
    Ok(Run { results, jwks })
}

/// One case file's cases, each from the filters as configured, with its test keys trusted;
/// the results in order, and the keys.
fn run_file(policy: &Policy, cases: &CaseFile, file: &str, options: &Options<'_>) -> Result<(Vec<CaseResult>, TestKeys), String> {
    let steps = cases
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| case.steps().map_err(|e| format!("{file}: cases[{i}] ({}): {e}", case.name)))
        .collect::<Result<Vec<_>, _>>()?;
    let (policy, keys, served) = with_test_keys(policy, &cases.keys, file)?;
    let env: Vec<(String, String)> = cases.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // One proxy per way the remote JWKS answers since its start, started when a case needs it.
    let mut chains: BTreeMap<JwksAnswer, Chain> = BTreeMap::new();
    let mut results = Vec::with_capacity(cases.cases.len());
    for (case, steps) in cases.cases.iter().zip(&steps) {
        let answer = case.jwks.unwrap_or(cases.jwks);
        let chain = match chains.entry(answer) {
            std::collections::btree_map::Entry::Occupied(chain) => chain.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let mut calls = CaseCalls::new(answer, &served, cases.fleet.clone());
                let started = start(&policy, options, &env, cases.at.unwrap_or(DEFAULT_AT), &mut calls).map_err(|e| match answer {
                    JwksAnswer::Served => format!("{file}: {e}"),
                    _ => format!("{file}: {e} (the remote JWKS {answer} since the start)"),
                })?;
                slot.insert(started)
            }
        };
        chain.restore();
        let mut calls = CaseCalls::new(answer, &served, cases.fleet.with(case.fleet.as_ref()));
        results.push(run_case(chain, case, steps, &keys, file, cases.at, &mut calls));
    }
    Ok((results, keys))
}

/// A case's steps (`Case::steps`) in order on the chain, each checked.
fn run_case(chain: &mut Chain, case: &Case, steps: &[StepRef<'_>], keys: &TestKeys, file: &str, file_at: Option<u64>, calls: &mut dyn Calls) -> CaseResult {
    let mut result = CaseResult { file: file.to_string(), name: case.name.clone(), failures: Vec::new(), got: String::new(), sent: Vec::new(), outcome: None, decisions: Vec::new() };
    let before = counters(chain);
    let many = steps.len() > 1;
    for (i, step) in steps.iter().enumerate() {
        let label = |what: String| if many { format!("step {}: {what}", i + 1) } else { what };
        match run_step(chain, step, keys, file, file_at, calls) {
            Ok((request, outcome, last)) => {
                result.got = label(describe(&outcome));
                result.failures.extend(check(step.expect, &outcome, &last).into_iter().map(label));
                result.sent.push((request, step.repeat));
                result.outcome = Some(outcome);
            }
            Err(e) => {
                result.failures.push(label(e));
                return result;
            }
        }
    }
    result.decisions = counters(chain).into_iter().filter(|(name, v)| before.get(name) != Some(v) && name.starts_with("meshward_")).map(|(name, _)| name).collect();
    result
}

/// One request of a case sent `repeat` times: what was sent, the last answer, and the decision
/// counters the last one moved.
fn run_step(chain: &mut Chain, step: &StepRef<'_>, keys: &TestKeys, file: &str, file_at: Option<u64>, calls: &mut dyn Calls) -> Result<(Request, Outcome, Vec<String>), String> {
    let at = step.at.or(file_at).unwrap_or(DEFAULT_AT);
    chain.clock().set(at.saturating_mul(1_000_000_000));
    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    let (request, upstream) = build(step, keys, at, base)?;
    let mut last = None;
    for _ in 0..step.repeat {
        last = Some(decided_exchange(chain, &request, &upstream, calls)?);
    }
    let (outcome, decisions) = last.ok_or("repeat: 0 sends nothing")?;
    Ok((request, outcome, decisions))
}

/// One request through the chain and the decision counters it moved, written by a tick after
/// it (the modules batch their counters until a tick; each request here ends with one, so the
/// next one's are its own).
pub fn decided_exchange(chain: &mut Chain, request: &Request, upstream: &Upstream, calls: &mut dyn Calls) -> Result<(Outcome, Vec<String>), String> {
    let before = counters(chain);
    let outcome = chain.exchange(request, upstream, calls).map_err(|e| format!("{e} (Envoy's VM would be dead: every request refused)"))?;
    chain.tick_now(calls).map_err(|e| format!("{e} (in the tick after the request)"))?;
    let moved = counters(chain).into_iter().filter(|(name, v)| before.get(name) != Some(v) && name.starts_with("meshward_")).map(|(name, _)| name).collect();
    Ok((outcome, moved))
}

/// Every VM's counters by name.
pub fn counters(chain: &Chain) -> BTreeMap<String, i64> {
    chain.metrics().into_iter().flatten().filter(|m| m.counter).map(|m| (m.name.clone(), m.value)).collect()
}

/// `meshward test --init`: a starting case file for the policy ([`crate::init_cases`]), each
/// draft's expectation what the modules decide for it now, as YAML to review.
pub fn init(policy: &Policy, options: &Options<'_>) -> Result<String, String> {
    let (keys, env, drafts) = crate::init_cases::drafts(policy);
    let cases: Vec<Value> = drafts
        .into_iter()
        .map(|d| {
            let mut case = json!({"name": d.name, "request": d.request, "expect": {}});
            if let Some(upstream) = d.upstream {
                case["upstream"] = upstream;
            }
            if d.repeat > 1 {
                case["repeat"] = json!(d.repeat);
            }
            if let Some(fleet) = d.fleet {
                case["fleet"] = fleet;
            }
            if let Some(jwks) = d.jwks {
                case["jwks"] = jwks;
            }
            case
        })
        .collect();
    let mut file = json!({"keys": keys, "env": env, "cases": cases});
    let parsed: CaseFile = serde_json::from_value(file.clone()).map_err(|e| format!("a drafted case: {e}"))?;
    let (results, _) = run_file(policy, &parsed, "--init", options)?;
    for (i, (case, result)) in parsed.cases.iter().zip(results).enumerate() {
        let Some(o) = result.outcome else {
            return Err(format!("{}: {}", case.name, result.failures.join("; ")));
        };
        let mut expect = Map::new();
        if o.reset {
            expect.insert("reset".into(), json!(true));
        } else {
            expect.insert("status".into(), json!(o.status));
        }
        if let Some(reason) = o.local_reply.as_ref().and_then(reason) {
            expect.insert("reason".into(), json!(reason));
        }
        expect.insert("reached_service".into(), json!(o.upstream_request.is_some()));
        file["cases"][i]["expect"] = Value::Object(expect);
    }
    Ok(format!(
        "# A starting case file for {}, made by `meshward test --init`: for each rule a request it\n\
         # should allow and one it should refuse. Each `expect` is what the policy decides NOW:\n\
         # read every case, and change the ones that are not what the service should get.\n{}",
        policy.path.display(),
        crate::render::to_yaml(&file)
    ))
}

/// The connection's properties: the caller's address [default: 127.0.0.1:40000] and the URI SAN
/// of its client certificate (a SPIFFE ID).
pub(crate) fn connection(source: Option<&str>, peer: Option<&str>) -> Vec<(Vec<String>, Vec<u8>)> {
    let mut properties = vec![(vec!["source".to_string(), "address".to_string()], source.unwrap_or("127.0.0.1:40000").as_bytes().to_vec())];
    if let Some(peer) = peer {
        properties.push((vec!["connection".to_string(), "uri_san_peer_certificate".to_string()], peer.as_bytes().to_vec()));
    }
    properties
}

/// The request and the service's answer a case describes.
fn build(step: &StepRef<'_>, keys: &TestKeys, at: u64, base: &Path) -> Result<(Request, Upstream), String> {
    let r = step.request;
    let mut headers = vec![
        (":method".to_string(), r.method.clone()),
        (":path".to_string(), r.path.clone()),
        (":authority".to_string(), r.authority.clone().unwrap_or_else(|| "service.test".into())),
        (":scheme".to_string(), "http".to_string()),
        ("x-forwarded-proto".to_string(), "http".to_string()),
    ];
    if let Some(token) = &r.token {
        let Some((key, provider)) = keys.get(&token.key) else {
            return Err(format!("request.token.key: no test key `{}` (keys: {})", token.key, keys.keys().cloned().collect::<Vec<_>>().join(", ")));
        };
        let mut claims = Map::new();
        if let Some(issuer) = provider.get("issuer") {
            claims.insert("iss".into(), issuer.clone());
        }
        if let Some(audience) = provider.get("audiences").and_then(|a| a.get(0)) {
            claims.insert("aud".into(), audience.clone());
        }
        claims.insert("iat".into(), json!(at));
        claims.insert("exp".into(), json!(at + 3600));
        for (k, v) in &token.claims {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        headers.push(("authorization".into(), format!("Bearer {}", key.sign(&claims)?)));
    }
    let file = match &r.body_file {
        Some(path) => {
            let path = base.join(path);
            Some(std::fs::read(&path).map_err(|e| format!("request.body_file: {}: {e}", path.display()))?)
        }
        None => None,
    };
    let body = content("request", r.body.as_ref(), r.json.as_ref(), file, &r.headers, &mut headers)?;
    if let Some(body) = &body {
        headers.push(("content-length".into(), body.len().to_string()));
    }
    let request = Request { headers, body, chunk: r.chunk.unwrap_or(0), properties: connection(r.source.as_deref(), r.peer.as_deref()) };
    let upstream = match step.upstream {
        None => Upstream::default(),
        Some(u) => {
            let mut headers = vec![(":status".to_string(), u.status.to_string())];
            let body = content("upstream", u.body.as_ref(), u.json.as_ref(), None, &u.headers, &mut headers)?;
            Upstream { headers, body: body.unwrap_or_default() }
        }
    };
    Ok((request, upstream))
}

/// A message's body (`body` as text or `json`) and its headers appended to `headers`; JSON is
/// sent as `application/json` unless the headers name another type.
fn content(what: &str, text: Option<&String>, json: Option<&Value>, file: Option<Vec<u8>>, given: &BTreeMap<String, String>, headers: &mut Vec<(String, String)>) -> Result<Option<Vec<u8>>, String> {
    let body = match (text, json, file) {
        (Some(text), None, None) => Some(text.clone().into_bytes()),
        (None, Some(v), None) => {
            if !given.keys().any(|k| k.eq_ignore_ascii_case("content-type")) {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Some(v.to_string().into_bytes())
        }
        (None, None, file) => file,
        _ => return Err(format!("{what}: more than one body (body, json, body_file: one of them)")),
    };
    headers.extend(given.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
    Ok(body)
}

/// The deny reason of a filter's answer: its JSON body's `reason`, or gRPC's `meshward-reason`.
pub fn reason(reply: &LocalReply) -> Option<String> {
    if let Some((_, v)) = reply.headers.iter().find(|(k, _)| k == "meshward-reason") {
        return Some(v.clone());
    }
    serde_json::from_slice::<Value>(&reply.body).ok()?.get("reason")?.as_str().map(str::to_string)
}

fn describe(o: &Outcome) -> String {
    let mut s = if o.held {
        "held: no filter let the request go, none answered".to_string()
    } else if o.reset {
        format!("{} then reset (the answer was cut)", o.status)
    } else {
        o.status.to_string()
    };
    match &o.local_reply {
        Some(reply) => match reason(reply) {
            Some(why) => s.push_str(&format!(" {why}")),
            None if !reply.details.is_empty() => s.push_str(&format!(" {}", reply.details)),
            None => s.push_str(" (answered by a filter, not the service)"),
        },
        None if o.upstream_request.is_some() => s.push_str(" (reached the service)"),
        None => {}
    }
    s
}

/// The stage whose refusal a case's decision counters record.
fn refusing_stage(decisions: &[String]) -> Option<&str> {
    refusal(decisions).map(|(stage, _, _)| stage)
}

/// The refusal the decision counters record: (stage, rule, reason).
pub fn refusal(decisions: &[String]) -> Option<(&str, Option<&str>, Option<&str>)> {
    decisions.iter().find_map(|d| decision_parts(d).filter(|p| p.1 == "denied").map(|(stage, _, route, reason)| (stage, route, reason)))
}

/// What the case expected and did not get.
fn check(expect: &Expect, o: &Outcome, decisions: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(want) = &expect.stage {
        let got = refusing_stage(decisions);
        if got != Some(want.as_str()) {
            failures.push(format!("stage: expected {want}, got {}", got.unwrap_or("none")));
        }
    }
    if expect.status.is_none()
        && expect.reason.is_none()
        && expect.reached_service.is_none()
        && expect.reset.is_none()
        && expect.stage.is_none()
        && expect.service_sees.is_empty()
        && expect.service_does_not_see.is_empty()
        && expect.client_sees.is_empty()
        && expect.grpc_status.is_none()
    {
        failures.push("expect: says nothing (status, reason, stage, reached_service, reset, service_sees, service_does_not_see, client_sees, grpc_status)".into());
    }
    if let Some(reset) = expect.reset {
        if o.reset != reset {
            failures.push(format!("reset: expected {reset}, got {}", describe(o)));
        }
    }
    if let Some(status) = expect.status {
        if o.held || o.reset || o.status != status {
            failures.push(format!("status: expected {status}, got {}", describe(o)));
        }
    }
    let got_reason = o.local_reply.as_ref().and_then(reason);
    if let Some(want) = &expect.reason {
        if got_reason.as_deref() != Some(want) {
            failures.push(format!("reason: expected {want}, got {}", got_reason.as_deref().unwrap_or("none")));
        }
    }
    if let Some(reached) = expect.reached_service {
        if o.upstream_request.is_some() != reached {
            failures.push(format!("reached_service: expected {reached}, got {}", o.upstream_request.is_some()));
        }
    }
    if !expect.service_sees.is_empty() || !expect.service_does_not_see.is_empty() {
        match &o.upstream_request {
            None => failures.push("service_sees: the request did not reach the service".into()),
            Some((headers, _)) => {
                let value = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
                for (name, want) in &expect.service_sees {
                    if value(name) != Some(want.as_str()) {
                        failures.push(format!("service_sees.{name}: expected {want:?}, got {:?}", value(name)));
                    }
                }
                for name in &expect.service_does_not_see {
                    if let Some(v) = value(name) {
                        failures.push(format!("service_does_not_see: {name} reached the service ({v:?})"));
                    }
                }
            }
        }
    }
    let answered = |name: &str| o.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    for (name, want) in &expect.client_sees {
        if answered(name) != Some(want.as_str()) {
            failures.push(format!("client_sees.{name}: expected {want:?}, got {:?}", answered(name)));
        }
    }
    if let Some(want) = expect.grpc_status {
        let got = answered("grpc-status");
        if got != Some(want.to_string().as_str()) {
            failures.push(format!("grpc_status: expected {want}, got {}", got.unwrap_or("none")));
        }
    }
    failures
}

/// A decision counter's parts: (stage, decision, route, reason).
pub fn decision_parts(counter: &str) -> Option<(&str, &str, Option<&str>, Option<&str>)> {
    let rest = counter.strip_prefix("meshward_")?;
    let (stage, rest) = rest.split_once('_')?;
    let (decision, labels) = rest.split_once("_total")?;
    let (route, reason) = match labels.split_once(".reason.") {
        Some((route, reason)) => (route, Some(reason)),
        None => (labels, None),
    };
    Some((stage, decision, route.strip_prefix(".route."), reason))
}

/// Which of the policy's named rules and contract operations some case had decided, and the
/// deny reasons the cases produced, per stage.
pub struct Coverage {
    /// (stage, rule or operation, decided by some case), in the policy's order.
    pub rules: Vec<(String, String, bool)>,
    pub reasons: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Each stage's deny reasons no case produced, in the policy's order of stages.
    pub unproduced: Vec<(String, Vec<&'static str>)>,
}

/// Every deny reason a stage can give (its error's table).
fn stage_reasons(kind: &str) -> &'static [&'static str] {
    match kind {
        "jwt" => meshward_jwt::JwtError::REASONS,
        "webhook" => meshward_webhook::WebhookError::REASONS,
        "idempotency" => meshward_idempotency::IdempotencyError::REASONS,
        "schema" => meshward_schema::SchemaError::REASONS,
        "ownership" => meshward_ownership::OwnershipError::REASONS,
        "ratelimit" => meshward_ratelimit::RateLimitError::REASONS,
        "grpc" => meshward_grpc::GrpcError::REASONS,
        "graphql" => meshward_graphql::GraphqlError::REASONS,
        _ => &[],
    }
}

/// The rules a policy names, per stage (ownership and ratelimit rules, webhook endpoints, the
/// contract's operations for schema), against the routes the cases' decisions name.
pub fn coverage(policy: &Policy, results: &[CaseResult]) -> Coverage {
    let mut decided = std::collections::BTreeSet::new();
    let mut reasons: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for counter in results.iter().flat_map(|r| &r.decisions) {
        if let Some((stage, decision, route, reason)) = decision_parts(counter) {
            if let Some(route) = route {
                decided.insert((stage.to_string(), route.to_string()));
            }
            if let (Some(reason), true) = (reason, decision != "allowed") {
                reasons.entry(stage.to_string()).or_default().insert(reason.to_string());
            }
        }
    }
    let mut rules = Vec::new();
    for stage in &policy.stages {
        let names: Vec<String> = match stage.kind.as_str() {
            "ownership" | "ratelimit" => named(&stage.config, "rules"),
            "webhook" => named(&stage.config, "endpoints"),
            "schema" => policy
                .contract
                .as_ref()
                .map(|c| crate::init_cases::operations(&c.document).into_iter().filter_map(|(_, _, id)| id).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for name in names {
            let hit = decided.contains(&(stage.kind.clone(), name.clone()));
            rules.push((stage.kind.clone(), name, hit));
        }
    }
    let mut unproduced = Vec::new();
    for stage in &policy.stages {
        let produced = reasons.get(&stage.kind);
        let mut missed: Vec<&'static str> = Vec::new();
        for &reason in stage_reasons(&stage.kind) {
            if !produced.is_some_and(|p| p.contains(reason)) && !missed.contains(&reason) {
                missed.push(reason);
            }
        }
        if !missed.is_empty() && !unproduced.iter().any(|(kind, _)| kind == &stage.kind) {
            unproduced.push((stage.kind.clone(), missed));
        }
    }
    Coverage { rules, reasons, unproduced }
}

fn named(config: &Value, list: &str) -> Vec<String> {
    config.get(list).and_then(Value::as_array).into_iter().flatten().filter_map(|r| r.get("name")?.as_str().map(str::to_string)).collect()
}

/// Coverage as text: what no case decided, and the deny reasons seen.
pub fn render_coverage(c: &Coverage) -> String {
    let decided = c.rules.iter().filter(|r| r.2).count();
    let mut out = format!("coverage: {decided} of {} rules and operations decided by a case\n", c.rules.len());
    let missed: Vec<String> = c.rules.iter().filter(|r| !r.2).map(|(stage, name, _)| format!("{stage} {name}")).collect();
    if !missed.is_empty() {
        out.push_str(&format!("  no case reached: {}\n", missed.join(", ")));
    }
    let reasons: Vec<String> = c.reasons.iter().map(|(stage, rs)| format!("{stage} {}", rs.iter().cloned().collect::<Vec<_>>().join(", "))).collect();
    out.push_str(&format!("  deny reasons the cases produced: {}\n", if reasons.is_empty() { "none".to_string() } else { reasons.join("; ") }));
    let unproduced: Vec<String> = c.unproduced.iter().map(|(stage, rs)| format!("{stage} {}", rs.join(", "))).collect();
    if !unproduced.is_empty() {
        out.push_str(&format!("  deny reasons no case produced: {}\n", unproduced.join("; ")));
    }
    out
}

/// The results as a table, and a closing count.
pub fn render_text(results: &[CaseResult]) -> String {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0).min(60);
    let mut out = String::new();
    for r in results {
        let mark = if r.failures.is_empty() { "PASS" } else { "FAIL" };
        out.push_str(&format!("{mark}  {:<width$}  {}\n", r.name, r.got));
        for f in &r.failures {
            out.push_str(&format!("        {f}   ({})\n", r.file));
        }
    }
    out
}

/// The closing count.
pub fn render_count(results: &[CaseResult]) -> String {
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    format!("{} cases: {} passed, {failed} failed\n", results.len(), results.len() - failed)
}

/// The results as JSON: per case what was sent and what happened (status, reason, whether the
/// service got it), for tools and for replaying the same requests elsewhere.
pub fn render_json(run: &Run, coverage: &Coverage) -> Value {
    let cases: Vec<Value> = run
        .results
        .iter()
        .map(|r| {
            let request = |q: &Request| {
                json!({"headers": q.headers, "body": q.body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                       "properties": q.properties.iter().map(|(k, v)| (k.join("."), String::from_utf8_lossy(v).into_owned())).collect::<BTreeMap<_, _>>()})
            };
            let steps: Vec<Value> = r.sent.iter().map(|(q, repeat)| json!({"request": request(q), "repeat": repeat})).collect();
            let (sent, repeat) = r.sent.last().map_or((Value::Null, 0), |(q, n)| (request(q), *n));
            let outcome = r.outcome.as_ref().map(|o| {
                let calls: Vec<Value> = o.calls.iter().map(|c| match &c.kind {
                    CallKind::Http { .. } => json!({"cluster": c.cluster, "http": true}),
                    CallKind::Grpc { service, method, .. } => json!({"cluster": c.cluster, "grpc": format!("{service}/{method}")}),
                }).collect();
                json!({"status": o.status, "reason": o.local_reply.as_ref().and_then(reason), "reached_service": o.upstream_request.is_some(),
                       "reset": o.reset, "held": o.held, "headers": o.headers, "calls": calls})
            });
            json!({"file": r.file, "name": r.name, "passed": r.failures.is_empty(), "failures": r.failures, "request": sent, "outcome": outcome,
                   "decisions": r.decisions, "repeat": repeat, "steps": steps})
        })
        .collect();
    let rules: Vec<Value> = coverage.rules.iter().map(|(stage, name, decided)| json!({"stage": stage, "name": name, "decided": decided})).collect();
    json!({"cases": cases, "jwks": run.jwks, "coverage": {"rules": rules, "deny_reasons": coverage.reasons,
        "deny_reasons_not_produced": coverage.unproduced.iter().cloned().collect::<BTreeMap<_, _>>()}})
}

/// The results as JUnit XML (one suite per case file), for CI.
pub fn render_junit(results: &[CaseResult]) -> String {
    fn esc(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"meshward test\">\n");
    let mut files: Vec<&str> = results.iter().map(|r| r.file.as_str()).collect();
    files.dedup();
    for file in files {
        let in_file: Vec<&CaseResult> = results.iter().filter(|r| r.file == file).collect();
        let failed = in_file.iter().filter(|r| !r.failures.is_empty()).count();
        out.push_str(&format!("  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\">\n", esc(file), in_file.len()));
        for r in in_file {
            out.push_str(&format!("    <testcase classname=\"{}\" name=\"{}\"", esc(file), esc(&r.name)));
            if r.failures.is_empty() {
                out.push_str("/>\n");
            } else {
                out.push_str(&format!(">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n", esc(&r.failures[0]), esc(&r.failures.join("\n"))));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, reply: Option<(&str, &str)>) -> Outcome {
        Outcome {
            status,
            local_reply: reply.map(|(reason, _)| LocalReply {
                status,
                details: String::new(),
                headers: vec![],
                body: json!({"reason": reason}).to_string().into_bytes(),
                grpc_status: None,
            }),
            upstream_request: if reply.is_none() { Some((vec![("x-a".into(), "1".into())], vec![])) } else { None },
            ..Outcome::default()
        }
    }

    fn check_all(expect: &Expect, o: &Outcome) -> Vec<String> {
        check(expect, o, &["meshward_ownership_denied_total.route.r.reason.tenant_mismatch".to_string()])
    }

    #[test]
    fn a_case_checks_what_it_names() {
        let allowed = outcome(200, None);
        let denied = outcome(403, Some(("tenant_mismatch", "")));
        let expect = |v: Value| serde_json::from_value::<Expect>(v).unwrap();
        assert!(check_all(&expect(json!({"status": 200})), &allowed).is_empty());
        assert!(check_all(&expect(json!({"status": 403, "reason": "tenant_mismatch", "reached_service": false})), &denied).is_empty());
        assert_eq!(check_all(&expect(json!({"status": 200})), &denied).len(), 1);
        assert_eq!(check_all(&expect(json!({"reason": "expired"})), &denied), vec!["reason: expected expired, got tenant_mismatch"]);
        assert!(check_all(&expect(json!({"service_sees": {"x-a": "1"}, "service_does_not_see": ["x-b"]})), &allowed).is_empty());
        assert_eq!(check_all(&expect(json!({"service_does_not_see": ["x-a"]})), &allowed).len(), 1);
        assert_eq!(check_all(&expect(json!({})), &allowed).len(), 1, "an expectation that says nothing fails");
        assert!(check_all(&expect(json!({"stage": "ownership"})), &denied).is_empty());
        assert_eq!(check_all(&expect(json!({"stage": "jwt"})), &denied), vec!["stage: expected jwt, got ownership"]);
    }

    #[test]
    fn a_test_key_signs_tokens_its_jwks_verifies() {
        let key = Key::new("demo", "k1".into()).unwrap();
        let jwks: Value = serde_json::from_str(&key.jwks).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], "k1");
        let token = key.sign(&Map::from_iter([("sub".to_string(), json!("alice"))])).unwrap();
        assert_eq!(token.split('.').count(), 3);
        // The same key every run: the same token for the same claims.
        assert_eq!(Key::new("demo", "k1".into()).unwrap().sign(&Map::new()).unwrap(), key.sign(&Map::new()).unwrap());
    }

    #[test]
    fn a_decision_counter_names_stage_route_and_reason() {
        assert_eq!(decision_parts("meshward_ownership_denied_total.route.order-read.reason.tenant_boundary"),
                   Some(("ownership", "denied", Some("order-read"), Some("tenant_boundary"))));
        assert_eq!(decision_parts("meshward_jwt_denied_total.reason.expired"), Some(("jwt", "denied", None, Some("expired"))));
        assert_eq!(decision_parts("meshward_schema_shadow_denied_total.route.getOrder"), Some(("schema", "shadow_denied", Some("getOrder"), None)));
        assert_eq!(decision_parts("meshward_jwt_allowed_total"), Some(("jwt", "allowed", None, None)));
        assert_eq!(decision_parts("envoy_other"), None);
    }

    #[test]
    fn junit_escapes_and_counts() {
        let results = vec![
            CaseResult { file: "a.yaml".into(), name: "ok <1>".into(), failures: vec![], got: "200".into(), sent: vec![], outcome: None, decisions: vec![] },
            CaseResult {
                file: "a.yaml".into(),
                name: "bad".into(),
                failures: vec!["status: expected 403, got 200 & more".into()],
                got: "200".into(),
                sent: vec![],
                outcome: None,
                decisions: vec![],
            },
        ];
        let xml = render_junit(&results);
        assert!(xml.contains("tests=\"2\" failures=\"1\""));
        assert!(xml.contains("ok &lt;1&gt;"));
        assert!(xml.contains("got 200 &amp; more"));
        assert_eq!(render_count(&results), "2 cases: 1 passed, 1 failed\n");
    }
}
