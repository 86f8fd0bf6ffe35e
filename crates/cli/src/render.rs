//! `meshward render`: the policy as an Envoy bootstrap (for a local Envoy or the harness) or as
//! Istio `WasmPlugin` resources, with the stages as separate modules or as the bundle.

use std::path::{Path, PathBuf};

use meshward_runtime::HOLD_HEADERS_ENV;
use serde_json::{json, Value};

use crate::editions;
use crate::policy::Policy;

/// Whether Envoy gives back the pages compiling the modules freed (`memory_allocator_manager`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryRelease {
    /// Every second, from a background thread: 12–20 MiB less per pod; its first pass, ~3–4 s
    /// after start, roughly doubles that second's p99 on a one-core sidecar.
    Background,
    /// Never: the first seconds level with the warm ones, the freed pages kept.
    Off,
}

/// One module per stage, chained; or every stage in one bundle module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    /// One module per stage, chained in the policy's order.
    Separate,
    /// Every stage in one module: the smallest bundle edition holding them (`meshward.wasm`
    /// holds all).
    Bundle,
}

/// A filter to render: its name (`jwt`, ..., `bundle`), module name and configuration.
struct Filter {
    name: String,
    /// The plugin's name, root id and VM id (`meshward_jwt`, `meshward` for the bundle).
    module: String,
    /// The stages of a bundle, and `signatures` when it must verify tokens itself (its module
    /// file is the smallest edition holding them all); empty for a separate filter (its file is
    /// named after its module).
    stages: Vec<String>,
    config: Value,
    /// Istio phase: AUTHN for stages that authenticate the caller, AUTHZ for the rest.
    phase: &'static str,
}

impl Filter {
    /// The stem of the module file in `modules_dir` that runs this filter.
    fn file(&self, modules_dir: &Path) -> String {
        if self.stages.is_empty() {
            return self.module.clone();
        }
        editions::pick(modules_dir, &self.stages.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

fn phase(kind: &str) -> &'static str {
    match kind {
        "jwt" | "webhook" => "AUTHN",
        _ => "AUTHZ",
    }
}

/// Audit records are made by the bundle, the one module that sees every stage's decision.
pub fn check_form(policy: &Policy, form: Form) -> Result<(), String> {
    if policy.audit.is_some() && form == Form::Separate {
        return Err(format!(
            "{}: audit: records are made by the bundle, which sees every stage's decision: use --form bundle",
            policy.path.display()
        ));
    }
    Ok(())
}

/// The access log that writes the bundle's audit records, one JSON line each, and nothing for
/// requests without one (Envoy's CEL access-log filter).
fn audit_access_log(path: &Path) -> Value {
    let key = format!("wasm.{}", meshward_core::audit::AUDIT_PROPERTY);
    json!({
        "name": "envoy.access_loggers.file",
        "filter": {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": format!("'{key}' in filter_state"),
        }}},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.display().to_string(),
            "log_format": {"text_format_source": {"inline_string": format!("%FILTER_STATE({key}:PLAIN)%\n")}},
        },
    })
}

/// The fields of the replay log (`render envoy --access-log`): one JSON line per request with
/// what `meshward replay` sends again — the request line, the caller (the verified principal
/// the jwt stage published, never the token), when, and what it got. No header but
/// content-type, no body, no query-string secrets beyond the path's.
pub const REPLAY_LOG_FIELDS: &[(&str, &str)] = &[
    ("time", "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(:PATH)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("content_type", "%REQ(CONTENT-TYPE)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("source", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("peer", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("principal", "%FILTER_STATE(wasm.meshward.principal:PLAIN)%"),
    ("status", "%RESPONSE_CODE%"),
    ("details", "%RESPONSE_CODE_DETAILS%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
];

/// The access log `meshward replay --from` reads ([`REPLAY_LOG_FIELDS`]).
fn replay_access_log(path: &Path) -> Value {
    let format: serde_json::Map<String, Value> = REPLAY_LOG_FIELDS.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect();
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.display().to_string(),
            "log_format": {"json_format": format},
        },
    })
}

/// The filters a policy renders to, each with the configuration its module loads.
fn filters(policy: &Policy, form: Form) -> Result<Vec<Filter>, String> {
    match form {
        Form::Separate => policy
            .stages
            .iter()
            .map(|stage| {
                Ok(Filter {
                    name: stage.kind.clone(),
                    module: format!("meshward_{}", stage.kind),
                    stages: Vec::new(),
                    config: stage.module_config()?,
                    phase: phase(&stage.kind),
                })
            })
            .collect(),
        Form::Bundle => {
            // The bundle runs where its first stage belongs: AUTHN when it authenticates.
            let phase = policy.stages.first().map_or("AUTHZ", |s| phase(&s.kind));
            let mut stages: Vec<String> = policy.stages.iter().map(|s| s.kind.clone()).collect();
            // A module without public-key signatures (the `native` edition) only where no
            // provider needs them.
            if policy.verifies_signatures() {
                stages.push(meshward_bundle_filter::SIGNATURES_LINE.to_string());
            }
            Ok(vec![Filter { name: "bundle".into(), module: editions::FULL.into(), stages, config: policy.bundle_config()?, phase }])
        }
    }
}

/// Where the Envoy bootstrap listens, sends traffic, and finds the modules.
pub struct EnvoyOptions<'a> {
    pub modules_dir: &'a Path,
    pub listen_port: u16,
    pub admin_port: u16,
    pub upstream: (String, u16),
    /// Clusters the stages call (remote JWKS, rate-limit service): name → (host, port, http2).
    pub clusters: Vec<(String, String, u16)>,
    /// Where the filters' configurations come from when `meshward serve` pushes them; `None`:
    /// written into the bootstrap.
    pub discovery: Option<Discovery<'a>>,
    /// Where the access log writes the audit records (a policy with `audit`).
    pub audit_log: &'a Path,
    /// Where the replay log goes (`--access-log`), read by `meshward replay --from`.
    pub access_log: Option<&'a Path>,
    pub memory_release: MemoryRelease,
}

/// How `meshward serve` reaches the Envoy: ECDS files it rewrites, or its xDS gRPC server
/// (host, port, and mTLS when serve runs with it).
pub enum Discovery<'a> {
    Files(&'a Path),
    /// `meshward serve --xds` instances serving one fleet (any one of them keeps it current).
    Xds(Vec<(String, u16)>, Option<XdsTls>),
}

/// The Envoy's side of the policy channel's mTLS: its client certificate and key, the CA serve's
/// certificate chains to, and the SPIFFE ID serve's certificate must carry.
pub struct XdsTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub server_id: String,
}

impl XdsTls {
    /// The `meshward_xds` cluster's transport socket: TLS with a client certificate, ALPN h2,
    /// serve's certificate verified against the CA and its SPIFFE ID.
    fn transport_socket(&self) -> Value {
        let file = |p: &PathBuf| json!({"filename": p.display().to_string()});
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{"certificate_chain": file(&self.cert), "private_key": file(&self.key)}],
                "validation_context": {
                    "trusted_ca": file(&self.ca),
                    "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": self.server_id}}],
                },
            },
        }})
    }
}

/// The cluster an Envoy rendered with `--xds` reaches `meshward serve` through.
const XDS_CLUSTER: &str = "meshward_xds";

fn cluster(name: &str, host: &str, port: u16, http2: bool) -> Value {
    cluster_of(name, &[(host.to_string(), port)], http2)
}

fn cluster_of(name: &str, endpoints: &[(String, u16)], http2: bool) -> Value {
    let endpoints: Vec<Value> =
        endpoints.iter().map(|(host, port)| json!({"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}})).collect();
    let mut c = json!({
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    c
}

/// Clusters a stage configuration calls, once each: `remote_jwks.http_uri.cluster`, the rate
/// limit's `global.cluster` and the webhook seen-set's `fleet.cluster` (both gRPC: HTTP/2).
fn called_clusters(policy: &Policy) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for stage in &policy.stages {
        if let Some(Value::Object(providers)) = stage.config.get("providers") {
            for p in providers.values() {
                if let Some(name) = p.pointer("/remote_jwks/http_uri/cluster").and_then(Value::as_str) {
                    out.push((name.to_string(), false));
                }
            }
        }
        for grpc in ["/global/cluster", "/fleet/cluster"] {
            if let Some(name) = stage.config.pointer(grpc).and_then(Value::as_str) {
                out.push((name.to_string(), true));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(name, _)| seen.insert(name.clone()));
    out
}

/// The type of an `envoy.filters.http.wasm` configuration.
pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The Wasm runtime the filters are built and tested for.
pub const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";

/// What an Envoy Wasm filter needs to run one meshward filter: the same facts whether they are
/// written as a bootstrap (JSON) or pushed over xDS (protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmPlugin {
    /// The filter's name in the chain and its ECDS resource name (`meshward.jwt`).
    pub filter_name: String,
    /// Plugin name, root id and VM id: one VM per module, so shared data is per module.
    pub module: String,
    pub filename: String,
    /// Environment variables the VM may read (secrets, through `vmConfig.env` in Istio).
    pub host_env_keys: Vec<String>,
    /// The stage configuration, as the module parses it.
    pub configuration: String,
}

impl WasmPlugin {
    fn new(f: &Filter, modules_dir: &Path) -> WasmPlugin {
        WasmPlugin {
            filter_name: format!("meshward.{}", f.name),
            module: f.module.clone(),
            filename: modules_dir.join(format!("{}.wasm", f.file(modules_dir))).display().to_string(),
            host_env_keys: Policy::secret_variables(&f.config),
            configuration: f.config.to_string(),
        }
    }

    /// The `envoy.filters.http.wasm` configuration, as JSON.
    fn to_json(&self) -> Value {
        let mut vm_config = json!({
            "vm_id": self.module,
            "runtime": WASM_RUNTIME,
            "code": {"local": {"filename": self.filename}},
        });
        // The module learns from its environment that the proxy holds request headers for it.
        let mut environment = json!({"key_values": {HOLD_HEADERS_ENV: "true"}});
        if !self.host_env_keys.is_empty() {
            environment["host_env_keys"] = json!(self.host_env_keys);
        }
        vm_config["environment_variables"] = environment;
        json!({
            "@type": WASM_TYPE,
            "config": {
                "name": self.module,
                "root_id": self.module,
                // A VM that fails must not let traffic through.
                "failure_policy": "FAIL_CLOSED",
                // Request headers wait while a stage reads the body: the service never sees a
                // request meshward refuses on its body (Envoy 1.35+).
                "allow_on_headers_stop_iteration": true,
                "vm_config": vm_config,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": self.configuration},
            },
        })
    }
}

/// The filters a policy renders to, in chain order, with their modules in `modules_dir`.
pub fn wasm_plugins(policy: &Policy, form: Form, modules_dir: &Path) -> Result<Vec<WasmPlugin>, String> {
    Ok(filters(policy, form)?.iter().map(|f| WasmPlugin::new(f, modules_dir)).collect())
}

/// The ECDS file of one filter (`meshward.<name>.json` in the served directory).
fn ecds_file(dir: &Path, filter_name: &str) -> std::path::PathBuf {
    dir.join(format!("{filter_name}.json"))
}

/// The filters' configurations as ECDS resources (a filesystem `DiscoveryResponse` per filter),
/// for `meshward serve --dir`: (file, content).
pub fn ecds(plugins: &[WasmPlugin], dir: &Path, version: &str) -> Vec<(std::path::PathBuf, Value)> {
    plugins
        .iter()
        .map(|p| {
            let resource = json!({
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": p.filter_name,
                "typed_config": p.to_json(),
            });
            (ecds_file(dir, &p.filter_name), json!({"version_info": version, "resources": [resource]}))
        })
        .collect()
}

/// An Envoy bootstrap (as JSON, which Envoy reads as YAML too).
pub fn envoy(policy: &Policy, form: Form, options: &EnvoyOptions<'_>) -> Result<Value, String> {
    check_form(policy, form)?;
    let mut http_filters = Vec::new();
    for plugin in wasm_plugins(policy, form, options.modules_dir)? {
        let name = plugin.filter_name.clone();
        // Discovered configuration: `meshward serve` keeps it current, new policy applies
        // without a restart; until the first configuration arrives, the listener waits.
        let discovered = |config_source: Value| {
            json!({"name": name, "config_discovery": {"config_source": config_source, "type_urls": [WASM_TYPE]}})
        };
        http_filters.push(match &options.discovery {
            Some(Discovery::Files(dir)) => discovered(json!({"resource_api_version": "V3", "path_config_source": {
                "path": ecds_file(dir, &name).display().to_string(),
                "watched_directory": {"path": dir.display().to_string()},
            }})),
            // Every filter on the one ADS stream (below): one connection and one stream per proxy.
            Some(Discovery::Xds(..)) => discovered(json!({"resource_api_version": "V3", "ads": {}})),
            None => json!({"name": name, "typed_config": plugin.to_json()}),
        });
    }
    http_filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut clusters = vec![cluster("upstream", &options.upstream.0, options.upstream.1, false)];
    for (name, http2) in called_clusters(policy) {
        let Some((_, host, port)) = options.clusters.iter().find(|(n, _, _)| *n == name) else {
            return Err(format!("the policy calls cluster `{name}`: give its address with --cluster {name}=HOST:PORT"));
        };
        clusters.push(cluster(&name, host, *port, http2));
    }
    if let Some(Discovery::Xds(servers, tls)) = &options.discovery {
        clusters.push(xds_cluster(servers, tls.as_ref()));
    }
    let mut config = json!({
        "node": {"id": policy.service, "cluster": policy.service},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": options.admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": options.listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        // `client_ip` is the peer Envoy saw, not an X-Forwarded-For a client chose.
                        "use_remote_address": true,
                        "xff_num_trusted_hops": 0,
                        // Envoy routes, and the service receives, the path meshward decided on:
                        // dot segments resolved, slashes merged, encoded slashes refused.
                        "normalize_path": true,
                        "merge_slashes": true,
                        "path_with_escaped_slashes_action": "REJECT_REQUEST",
                        "route_config": {"virtual_hosts": [{"name": policy.service, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    });
    let mut access_logs = Vec::new();
    if policy.audit.is_some() {
        access_logs.push(audit_access_log(options.audit_log));
    }
    if let Some(path) = options.access_log {
        access_logs.push(replay_access_log(path));
    }
    if !access_logs.is_empty() {
        config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = Value::Array(access_logs);
    }
    if let Some(Discovery::Xds(..)) = &options.discovery {
        // The node (with the ~60 KB list of extensions Envoy adds to it) on the stream's first
        // request only: serve keeps it from there.
        config["dynamic_resources"] = json!({"ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "set_node_on_first_message_only": true,
            "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
        }});
    }
    if let (Value::Object(bootstrap), Value::Object(extras)) = (&mut config, bootstrap_extras(options.memory_release)) {
        bootstrap.extend(extras);
    }
    Ok(config)
}

/// The cluster reaching `meshward serve`: gRPC (HTTP/2), every instance serving the fleet as an
/// endpoint (a stream that breaks reconnects to the next one, the Envoy keeping its last
/// configuration meanwhile), an instance that stopped answering found by HTTP/2 pings.
fn xds_cluster(servers: &[(String, u16)], tls: Option<&XdsTls>) -> Value {
    let mut xds = cluster_of(XDS_CLUSTER, servers, true);
    xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
        ["http2_protocol_options"] = json!({"connection_keepalive": {"interval": "30s", "timeout": "10s"}});
    xds["upstream_connection_options"] = json!({"tcp_keepalive": {}});
    if let Some(tls) = tls {
        xds["transport_socket"] = tls.transport_socket();
    }
    xds
}

/// What every Envoy running meshward needs in its bootstrap besides the filters; `render envoy`
/// writes it into the bootstrap, `render istio-bootstrap` into an Istio bootstrap override.
fn bootstrap_extras(release: MemoryRelease) -> Value {
    let mut extras = json!({
        // meshward's denial reasons, routes and configurations as Prometheus labels; anchored to
        // meshward's own stats, so Envoy's (and Istio's) keep their names.
        "stats_config": {"stats_tags": [
            {"tag_name": "reason", "regex": "^wasmcustom\\.meshward_\\w+_total(?:\\.route\\.[\\w-]+)?(\\.reason\\.(\\w+))$"},
            {"tag_name": "route", "regex": "^wasmcustom\\.meshward_\\w+_total(\\.route\\.([\\w-]+))(?:\\.reason\\.\\w+)?$"},
            // Which configuration each module runs (`meshward rollout status` reads it).
            {"tag_name": "config", "regex": "^wasmcustom\\.meshward(?:_\\w+)?_config_info(\\.config\\.([0-9a-f]+))$"},
        ]},
    });
    if release == MemoryRelease::Background {
        // Compiling wasm modules (each VM at start and at every policy push) leaves freed pages
        // in Envoy's allocator; give them back to the system every second.
        extras["memory_allocator_manager"] = json!({"bytes_to_release": MEMORY_RELEASE_BYTES, "memory_release_interval": "1s"});
    }
    extras
}

/// For Istio: a ConfigMap holding a sidecar bootstrap override (`custom_bootstrap.json`) with
/// [`bootstrap_extras`]; pods opt in with the annotation `sidecar.istio.io/bootstrapOverride:
/// meshward-bootstrap`. Istio merges it into the sidecar's bootstrap (its own `stats_tags` stay).
pub fn istio_bootstrap(policy: &Policy, release: MemoryRelease) -> Result<Value, String> {
    let bootstrap = serde_json::to_string_pretty(&bootstrap_extras(release)).map_err(|e| e.to_string())?;
    let mut metadata = json!({"name": "meshward-bootstrap", "labels": {"app.kubernetes.io/managed-by": "meshward"}});
    if let Some(namespace) = &policy.namespace {
        metadata["namespace"] = Value::String(namespace.clone());
    }
    Ok(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"custom_bootstrap.json": bootstrap}}))
}

/// Every module configuration the policy renders to, in either form: (module, the configuration
/// exactly as Envoy hands it to the module). What a proxy running this policy reports.
pub fn module_configurations(policy: &Policy) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for form in [Form::Separate, Form::Bundle] {
        out.extend(filters(policy, form)?.into_iter().map(|f| (f.module, f.config.to_string())));
    }
    Ok(out)
}

/// At most this much free memory is returned to the system per release interval.
const MEMORY_RELEASE_BYTES: u64 = 64 * 1024 * 1024;

/// The sha256 of a module, as Istio's `sha256` field wants it.
pub fn module_sha256(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e} (run `make build`, or give --dist)", path.display()))?;
    Ok(crate::package::sha256_hex(&bytes))
}

/// What Istio verifies a module fetched from `url` against: for `oci://`, the digest of the
/// image `meshward package` builds from it (Istio compares the manifest digest); otherwise
/// the module file's sha256.
fn pinned_sha256(url: &str, path: &Path) -> Result<String, String> {
    if url.starts_with("oci://") {
        crate::package::module_image_digest(path)
    } else {
        module_sha256(path)
    }
}

/// Istio `WasmPlugin` resources, one per filter, ordered by `priority` within their phase.
pub fn istio(policy: &Policy, form: Form, dist: &Path) -> Result<Vec<Value>, String> {
    let Some(url) = &policy.module_url else {
        return Err("the policy has no `modules.url` (where the sidecars fetch the modules from)".into());
    };
    check_form(policy, form)?;
    let filters = filters(policy, form)?;
    let mut out = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let file = f.file(dist);
        let module_url = url.replace("{module}", &file);
        let sha256 = pinned_sha256(&module_url, &dist.join(format!("{file}.wasm")))?;
        // Istio runs higher priorities first within a phase: the policy's order, top first.
        let priority = 10 * (filters.len() - i);
        let name = if f.name == "bundle" { format!("{}-meshward", policy.service) } else { format!("{}-meshward-{}", policy.service, f.name) };
        let mut metadata = json!({"name": name, "labels": {"meshward.io/filter": f.name, "app.kubernetes.io/managed-by": "meshward"}});
        if let Some(ns) = &policy.namespace {
            metadata["namespace"] = json!(ns);
        }
        let mut spec = json!({
            "selector": {"matchLabels": policy.selector},
            "url": module_url,
            "sha256": sha256,
            "imagePullPolicy": "IfNotPresent",
            "phase": f.phase,
            "priority": priority,
            "failStrategy": "FAIL_CLOSE",
            "pluginConfig": f.config,
        });
        let secrets = Policy::secret_variables(&f.config);
        if !secrets.is_empty() {
            // Secrets come from the sidecar's environment, never from the manifest.
            spec["vmConfig"] = json!({"env": secrets.iter().map(|s| json!({"name": s, "valueFrom": "HOST"})).collect::<Vec<_>>()});
        }
        out.push(json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": metadata, "spec": spec}));
    }
    Ok(out)
}

/// YAML that every reader reads the same way: block mappings and sequences, every string
/// double-quoted (JSON escapes are YAML escapes). YAML 1.1 readers (PyYAML, older Kubernetes
/// tooling) would otherwise turn an unquoted `2023-12-07T14:22:29Z` or `on` into a timestamp or
/// a boolean inside `pluginConfig`.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn key(k: &str) -> String {
    let plain = k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'@')
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./@".contains(&b))
        && !matches!(k.to_ascii_lowercase().as_str(), "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null");
    if plain && k != "@type" && !k.starts_with('@') {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

fn is_block(value: &Value) -> bool {
    matches!(value, Value::Object(m) if !m.is_empty()) || matches!(value, Value::Array(a) if !a.is_empty())
}

fn emit(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                if is_block(v) {
                    out.push_str(&format!("{pad}{}:\n", key(k)));
                    emit(v, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", key(k), scalar(v)));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for v in items {
                if is_block(v) {
                    // The first line of the item goes after the dash.
                    let mut inner = String::new();
                    emit(v, indent + 2, &mut inner);
                    let trimmed = inner.get(indent + 2..).unwrap_or("");
                    out.push_str(&format!("{pad}- {trimmed}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(v)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}
