//! `meshward`: policy as code for the meshward filters. `meshward --help` and `meshward
//! <command> --help` say what each command takes; `meshward completions SHELL` prints a shell
//! completion script.
//!
//! Exit codes: 0 fine, 1 the check found errors (or: not ready to enforce, drift found), 2 the
//! command or policy cannot be used.

mod case_calls;
mod check;
mod compile;
mod drift;
mod editions;
mod init_cases;
mod package;
mod policy;
mod policy_test;
mod render;
mod replay;
mod rollout;
mod serve;
mod xds;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use meshward_core::workload::{SpiffeIds, Workload};
use policy::Policy;
use render::{Discovery, EnvoyOptions, Form, MemoryRelease};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "meshward", version, about = "Policy as code for the meshward filters: check a service's policy against its contract, \
compile it into filter configurations, render Envoy and Istio resources, package the modules, gate the rollout on \
Prometheus, report drift, and serve the policy to running Envoys.",
    after_help = "Exit codes: 0 fine, 1 the check found errors (or: not ready to enforce, drift found), 2 the command or policy cannot be used.",
    // A flag given twice takes its last value (scripts append overrides); --cluster accumulates.
    args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The service's policy file, and optionally a contract in place of its `openapi`.
#[derive(Args)]
struct PolicyArgs {
    /// The service's policy file (YAML).
    policy: PathBuf,
    /// An OpenAPI contract to use instead of the one the policy's `openapi` names.
    #[arg(long, value_name = "SPEC")]
    openapi: Option<PathBuf>,
}

impl PolicyArgs {
    fn load(&self) -> Result<Policy, String> {
        Policy::load(&self.policy, self.openapi.as_deref()).map_err(|e| e.to_string())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Where the sidecars' metrics are, and over which window to read them.
#[derive(Args)]
struct PrometheusArgs {
    /// Prometheus' base URL, over plain HTTP as it is served inside a cluster.
    #[arg(long, value_name = "URL")]
    prometheus: String,
    /// The window to read, in seconds [default: the policy's `rollout.window`].
    #[arg(long, value_name = "SECONDS")]
    window: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Check a policy against its contract (and an Envoy configuration); exit 1 on errors.
    Check {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Also check this Envoy configuration (does it normalise paths as meshward reads them?).
        #[arg(long, value_name = "ENVOY_CONFIG")]
        envoy: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Compile the policy into each module's configuration (and the fleet engine's).
    Compile {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Write one JSON file per module (and meshward-fleet.yaml) here instead of stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Render Envoy or Istio resources that run the policy.
    #[command(subcommand)]
    Render(RenderTarget),
    /// Recorded traffic (HAR) through the policy in the real modules: what would change against
    /// the recorded answers or a baseline policy; exit 1 when any verdict changes.
    Replay {
        #[command(flatten)]
        policy: PolicyArgs,
        /// The recorded traffic: a HAR file, or the replay log `render envoy --access-log` writes.
        #[arg(long = "from", value_name = "FILE")]
        from: PathBuf,
        /// Compare with this policy run the same way instead of the recorded answers.
        #[arg(long, value_name = "POLICY")]
        baseline: Option<PathBuf>,
        /// The JWKS a remote jwt provider's fetch is answered with (the IdP's keys, saved to a
        /// file), for recorded real tokens (a HAR file); repeatable.
        #[arg(long = "jwks", value_name = "PROVIDER=FILE", value_parser = provider_file)]
        jwks: Vec<(String, PathBuf)>,
        #[arg(long, value_enum, default_value_t = Form::Separate)]
        form: Form,
        /// Where the built modules are.
        #[arg(long, value_name = "DIR", default_value = "dist")]
        modules: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run case files against the policy in the real modules (no Envoy); exit 1 on a failed case.
    Test {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Case files (YAML): requests, callers and the verdicts they must get.
        #[arg(required_unless_present = "init", value_name = "CASES")]
        cases: Vec<PathBuf>,
        /// Print a starting case file for the policy instead: requests each rule should allow
        /// and refuse, expecting what the policy decides now (review them).
        #[arg(long, conflicts_with_all = ["cases", "junit"])]
        init: bool,
        #[arg(long, value_enum, default_value_t = Form::Separate)]
        form: Form,
        /// Where the built modules are.
        #[arg(long, value_name = "DIR", default_value = "dist")]
        modules: PathBuf,
        /// Also write the results as JUnit XML here.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// json: each case's request as the filters got it (tokens included) and its outcome.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Compile the modules this run without reading or writing the cache of compiled
        /// modules ($MESHWARD_CACHE_DIR, else ~/.cache/meshward/wasm).
        #[arg(long)]
        no_cache: bool,
    },
    /// Build each module in --dist as an OCI image Istio's WasmPlugin can pull.
    Package {
        /// Where the built modules are.
        #[arg(long, value_name = "DIR", default_value = "dist")]
        dist: PathBuf,
        /// The OCI image layout directory to write.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
    },
    /// Is each stage within its violation budget? Gate promotion from shadow to enforce on it.
    #[command(subcommand)]
    Rollout(RolloutAction),
    /// Audit records written by the bundle's access log.
    #[command(subcommand)]
    Audit(AuditAction),
    /// Routes seen in traffic but not in the contract, and contract operations not seen.
    Drift {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        prometheus: PrometheusArgs,
    },
    /// Keep running Envoys' filter configurations current with the policy file (ECDS).
    Serve {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Serve ECDS over gRPC here (port 0 picks one); for Envoys rendered with --xds.
        #[arg(long, value_name = "IP:PORT", value_parser = socket_address)]
        xds: Option<SocketAddr>,
        /// Write ECDS files here; for Envoys rendered with --ecds.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Serve xDS over mTLS with this certificate (PEM; its SPIFFE ID is what proxies check).
        #[arg(long, value_name = "FILE", requires_all = ["tls_key", "client_ca", "allow_client"])]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The CA a proxy's client certificate must chain to (PEM); no certificate, no policy.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// A SPIFFE ID a proxy may present: exact, or a prefix ending in `/`
        /// (spiffe://cluster.local/ns/orders/); repeat it.
        #[arg(long, value_name = "SPIFFE_ID", requires = "tls_cert", value_parser = spiffe_ids)]
        allow_client: Vec<String>,
        #[arg(long, value_enum, default_value_t = Form::Separate)]
        form: Form,
        /// Where the Envoys find the modules.
        #[arg(long, value_name = "DIR", default_value = "/etc/envoy/wasm")]
        modules: PathBuf,
        /// How often to look at the policy and its contract, in milliseconds (at least 50).
        #[arg(long, value_name = "N", default_value_t = 500)]
        interval_ms: u64,
        /// Write the files once and exit (with --dir; for scripts and CI).
        #[arg(long)]
        once: bool,
    },
    /// Print a completion script for a shell.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chains of audit records: a removed, reordered or altered record is
    /// reported with its file and line (exit 1). Give rotated files oldest first.
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// A public key records are signed with (base64, or a file holding it); repeat for
        /// rotated keys. Then every producer must be signed, every signature valid, and a
        /// rotated file may be verified alone.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Make an Ed25519 key pair for `audit.signing`: the private key (a secret for the
    /// proxies' environment), the public key for `audit verify --key`, and its id.
    Keygen,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum RenderTarget {
    /// An Envoy bootstrap running the policy.
    Envoy {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, value_enum, default_value_t = Form::Separate)]
        form: Form,
        /// Where Envoy finds the modules.
        #[arg(long, value_name = "DIR", default_value = "/etc/envoy/wasm")]
        modules: PathBuf,
        #[arg(long, value_name = "PORT", default_value_t = 10000)]
        listen: u16,
        #[arg(long, value_name = "PORT", default_value_t = 9901)]
        admin: u16,
        /// The service behind the sidecar.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080", value_parser = host_port)]
        upstream: (String, u16),
        /// A cluster the policy calls (remote JWKS, rate-limit service, fleet engine); repeat it.
        #[arg(long, value_name = "NAME=HOST:PORT", value_parser = named_cluster)]
        cluster: Vec<(String, String, u16)>,
        /// Take the filters' configurations from `meshward serve --xds` at this address; repeat it
        /// for every serve instance of the fleet (a stream that breaks moves to another).
        #[arg(long, value_name = "HOST:PORT", value_parser = host_port, conflicts_with = "ecds")]
        xds: Vec<(String, u16)>,
        /// Take the filters' configurations from the files `meshward serve --dir` writes here.
        #[arg(long, value_name = "DIR")]
        ecds: Option<PathBuf>,
        /// Reach `meshward serve --xds` over mTLS with this client certificate (PEM; its SPIFFE
        /// ID is what serve checks).
        #[arg(long, value_name = "FILE", requires_all = ["xds", "xds_key", "xds_ca", "xds_server_id"])]
        xds_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "xds_cert")]
        xds_key: Option<PathBuf>,
        /// The CA serve's certificate must chain to (PEM).
        #[arg(long, value_name = "FILE", requires = "xds_cert")]
        xds_ca: Option<PathBuf>,
        /// The SPIFFE ID serve's certificate must carry.
        #[arg(long, value_name = "SPIFFE_ID", requires = "xds_cert", value_parser = spiffe_id)]
        xds_server_id: Option<String>,
        /// Where the access log writes the audit records of a policy with `audit`.
        #[arg(long, value_name = "FILE", default_value = "/dev/stdout")]
        audit_log: PathBuf,
        /// Also write the replay log here: a JSON line per request (its line, the verified
        /// caller's claims, never a token or body) that `meshward replay --from` reads.
        #[arg(long, value_name = "FILE")]
        access_log: Option<PathBuf>,
        /// Whether Envoy gives back the memory compiling the modules freed (background: 12–20 MiB
        /// less per pod, one slower second ~3–4 s after start; off: a flat start).
        #[arg(long, value_enum, default_value_t = MemoryRelease::Background)]
        memory_release: MemoryRelease,
    },
    /// For Istio: the sidecar bootstrap override meshward's metrics need (a ConfigMap; pods opt
    /// in with `sidecar.istio.io/bootstrapOverride: meshward-bootstrap`).
    IstioBootstrap {
        #[command(flatten)]
        policy: PolicyArgs,
        /// As for `render envoy`.
        #[arg(long, value_enum, default_value_t = MemoryRelease::Background)]
        memory_release: MemoryRelease,
    },
    /// Istio WasmPlugin resources, one per stage or one for the bundle.
    Istio {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, value_enum, default_value_t = Form::Separate)]
        form: Form,
        /// Where the built modules are (their sha256 pins the manifests).
        #[arg(long, value_name = "DIR", default_value = "dist")]
        dist: PathBuf,
    },
}

#[derive(Subcommand)]
enum RolloutAction {
    /// Each budgeted stage's verdict; exit 1 unless every one is within budget.
    Status {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        prometheus: PrometheusArgs,
    },
    /// When ready: the policy with every shadow stage enforcing (manifests, or --apply).
    Promote {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        prometheus: PrometheusArgs,
        #[arg(long, value_enum, default_value_t = Form::Separate)]
        form: Form,
        #[arg(long, value_name = "DIR", default_value = "dist")]
        dist: PathBuf,
        /// Instead of printing manifests, rewrite the policy file with every shadow stage
        /// enforcing, keeping the old one as `<policy>.previous`: `meshward serve`, watching
        /// the file, pushes it to the running Envoys.
        #[arg(long)]
        apply: bool,
    },
}

/// `NAME=FILE`: a jwt provider and a file.
fn provider_file(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.to_string(), PathBuf::from(file))),
        _ => Err(format!("{text:?} is not PROVIDER=FILE")),
    }
}

/// A SPIFFE ID, or a prefix of some ending in `/`.
fn spiffe_ids(text: &str) -> Result<String, String> {
    SpiffeIds::new(vec![text.to_string()]).map(|_| text.to_string())
}

fn spiffe_id(text: &str) -> Result<String, String> {
    Workload::parse(text).map(|_| text.to_string()).ok_or_else(|| format!("{text:?} is not a SPIFFE ID (spiffe://<trust-domain>/<path>)"))
}

/// A public key given to `audit verify --key`: the base64 text, or a file holding it.
fn verifying_key(arg: &str) -> Result<meshward_core::audit::signing::VerifyingKey, String> {
    let text = match std::fs::read_to_string(arg) {
        Ok(text) => text,
        Err(_) => arg.to_string(),
    };
    meshward_core::audit::signing::VerifyingKey::parse(&text).map_err(|e| format!("--key {arg}: {e}"))
}

fn audit_text(verified: &meshward_core::audit::Verified) -> String {
    let mut text: String = verified.findings.iter().map(|f| format!("{}:{}: {}\n", f.file, f.line, f.message)).collect();
    let producers: Vec<String> = verified.producers.iter().map(|(p, last)| format!("{p} (last #{last})")).collect();
    text.push_str(&format!("{} record(s) from {} producer(s): {}\n", verified.records, producers.len(), producers.join(", ")));
    for (producer, seq) in &verified.starts {
        text.push_str(&format!("{producer}: read from #{seq} on (earlier records are in other files)\n"));
    }
    for (producer, count) in &verified.unsigned_tail {
        text.push_str(&format!("{producer}: the last {count} record(s) are not signed yet (the producer's next signature covers them)\n"));
    }
    text.push_str(match (verified.findings.len(), verified.records) {
        (_, 0) => "no audit records\n",
        (0, _) => "every chain is intact\n",
        _ => "the records were tampered with or lost\n",
    });
    text
}

fn audit_json(verified: &meshward_core::audit::Verified) -> Value {
    serde_json::json!({
        "records": verified.records,
        "producers": verified.producers.iter().map(|(p, last)| serde_json::json!({"producer": p, "last_seq": last})).collect::<Vec<_>>(),
        "findings": verified.findings.iter().map(|f| serde_json::json!({"file": f.file, "line": f.line, "message": f.message})).collect::<Vec<_>>(),
        "starts": verified.starts.iter().map(|(p, seq)| serde_json::json!({"producer": p, "first_seq": seq})).collect::<Vec<_>>(),
        "unsigned_tail": verified.unsigned_tail.iter().map(|(p, n)| serde_json::json!({"producer": p, "records": n})).collect::<Vec<_>>(),
        "intact": verified.findings.is_empty() && verified.records > 0,
    })
}

fn socket_address(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("{text:?} is not IP:PORT (127.0.0.1:18000; port 0 picks one)"))
}

fn host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("{port:?} is not a port"))?;
    Ok((host.to_string(), port))
}

fn named_cluster(text: &str) -> Result<(String, String, u16), String> {
    let (name, address) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=HOST:PORT"))?;
    let (host, port) = host_port(address)?;
    Ok((name.to_string(), host, port))
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn write_json(path: &Path, value: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

fn yaml_documents(docs: &[Value]) -> String {
    let mut out = String::from("# Rendered by `meshward render istio`; edit the policy, not this file.\n");
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&render::to_yaml(doc));
    }
    out
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Check { policy, envoy, format } => {
            let policy = policy.load()?;
            let mut findings = check::check(&policy);
            if let Some(envoy) = envoy {
                let text = std::fs::read_to_string(&envoy).map_err(|e| format!("{}: {e}", envoy.display()))?;
                findings.extend(check::check_envoy(&envoy.display().to_string(), &text)?);
            }
            match format {
                Format::Text => out(&check::render_text(&findings)),
                Format::Json => out(&format!("{}\n", check::render_json(&findings))),
            }
            let failed = findings.iter().any(|f| f.severity == check::Severity::Error);
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Test { policy, cases, init, form, modules, junit, format, no_cache } => {
            let policy = policy.load()?;
            render::check_form(&policy, form)?;
            let cache = if no_cache { None } else { policy_test::cache_dir() };
            if init {
                out(&policy_test::init(&policy, &policy_test::Options { form, modules: &modules, cache: cache.as_deref() })?);
                return Ok(ExitCode::SUCCESS);
            }
            let run = policy_test::run(&policy, &cases, &policy_test::Options { form, modules: &modules, cache: cache.as_deref() })?;
            let coverage = policy_test::coverage(&policy, &run.results);
            match format {
                Format::Text => out(&format!(
                    "{}{}{}",
                    policy_test::render_text(&run.results),
                    policy_test::render_coverage(&coverage),
                    policy_test::render_count(&run.results)
                )),
                Format::Json => out(&format!("{}\n", policy_test::render_json(&run, &coverage))),
            }
            let results = run.results;
            if let Some(path) = junit {
                std::fs::write(&path, policy_test::render_junit(&results)).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let failed = results.iter().any(|r| !r.failures.is_empty());
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Replay { policy, from, baseline, jwks, form, modules, format } => {
            let policy = policy.load()?;
            render::check_form(&policy, form)?;
            let baseline = baseline.map(|b| Policy::load(&b, None).map_err(|e| e.to_string())).transpose()?;
            let traffic = replay::read_traffic(&from)?;
            // The VMs read secrets from this environment, as Envoy reads `host_env_keys` from its own.
            let mut env = Vec::new();
            for p in std::iter::once(&policy).chain(baseline.as_ref()) {
                for stage in &p.stages {
                    for name in Policy::secret_variables(&stage.config) {
                        if let Ok(value) = std::env::var(&name) {
                            env.push((name, value));
                        }
                    }
                }
            }
            let cache = policy_test::cache_dir();
            let options = policy_test::Options { form, modules: &modules, cache: cache.as_deref() };
            let mut idp_keys = std::collections::BTreeMap::new();
            for (provider, file) in jwks {
                let document = std::fs::read_to_string(&file).map_err(|e| format!("--jwks {provider}={}: {e}", file.display()))?;
                idp_keys.insert(provider, document);
            }
            let report = replay::replay(&policy, baseline.as_ref(), &traffic, &idp_keys, &options, &env)?;
            match format {
                Format::Text => out(&report.render_text()),
                Format::Json => out(&format!("{}\n", report.render_json())),
            }
            Ok(if report.changed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Compile { policy, out: out_dir } => {
            let policy = policy.load()?;
            // Compiling refuses what the modules would refuse; secrets may be absent here.
            compile::compile_policy(&policy).map_err(|e| format!("{}: {e}", policy.path.display()))?;
            let mut all = serde_json::Map::new();
            for stage in &policy.stages {
                all.insert(format!("meshward_{}", stage.kind), stage.module_config().map_err(|e| format!("{}: {e}", policy.path.display()))?);
            }
            all.insert("meshward".into(), policy.bundle_config().map_err(|e| format!("{}: {e}", policy.path.display()))?);
            let fleet = compile::fleet_config(&policy).map_err(|e| format!("{}: {e}", policy.path.display()))?;
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    for (module, config) in &all {
                        write_json(&dir.join(format!("{module}.json")), config)?;
                    }
                    if let Some(fleet) = &fleet {
                        let path = dir.join("meshward-fleet.yaml");
                        std::fs::write(&path, render::to_yaml(fleet)).map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                }
                None => {
                    if let Some(fleet) = fleet {
                        all.insert("meshward-fleet".into(), fleet);
                    }
                    out(&format!("{}\n", Value::Object(all)))
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(RenderTarget::Envoy {
            policy,
            form,
            modules,
            listen,
            admin,
            upstream,
            cluster,
            xds,
            ecds,
            xds_cert,
            xds_key,
            xds_ca,
            xds_server_id,
            audit_log,
            access_log,
            memory_release,
        }) => {
            let policy = policy.load()?;
            let xds_tls = match (xds_cert, xds_key, xds_ca, xds_server_id) {
                (Some(cert), Some(key), Some(ca), Some(server_id)) => Some(render::XdsTls { cert, key, ca, server_id }),
                _ => None,
            };
            let options = EnvoyOptions {
                modules_dir: &modules,
                listen_port: listen,
                admin_port: admin,
                upstream,
                clusters: cluster,
                discovery: match (&ecds, xds.is_empty()) {
                    (Some(dir), _) => Some(Discovery::Files(dir)),
                    (None, false) => Some(Discovery::Xds(xds, xds_tls)),
                    (None, true) => None,
                },
                audit_log: &audit_log,
                access_log: access_log.as_deref(),
                memory_release,
            };
            let config = render::envoy(&policy, form, &options)?;
            out(&render::to_yaml(&config));
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(RenderTarget::IstioBootstrap { policy, memory_release }) => {
            out(&yaml_documents(&[render::istio_bootstrap(&policy.load()?, memory_release)?]));
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(RenderTarget::Istio { policy, form, dist }) => {
            let policy = policy.load()?;
            out(&yaml_documents(&render::istio(&policy, form, &dist)?));
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollout(RolloutAction::Status { policy, prometheus }) => {
            let policy = policy.load()?;
            let status = rollout::status(&policy, &rollout::Prometheus::new(&prometheus.prometheus), prometheus.window)?;
            match prometheus.format {
                Format::Json => out(&format!("{}\n", serde_json::to_string(&status).map_err(|e| e.to_string())?)),
                Format::Text => out(&rollout::render_text(&status)),
            }
            Ok(if status.ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Rollout(RolloutAction::Promote { policy, prometheus, form, dist, apply }) => {
            let policy = policy.load()?;
            let status = rollout::status(&policy, &rollout::Prometheus::new(&prometheus.prometheus), prometheus.window)?;
            eprint!("{}", rollout::render_text(&status));
            if !status.ready {
                return Ok(ExitCode::from(1));
            }
            if apply {
                let previous = rollout::apply(&policy)?;
                out(&format!(
                    "promoted {}: every shadow stage enforces; `meshward serve` watching it pushes the new version. Roll back: mv {} {}\n",
                    policy.path.display(),
                    previous.display(),
                    policy.path.display()
                ));
            } else {
                out(&yaml_documents(&render::istio(&rollout::enforcing(&policy), form, &dist)?));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drift { policy, prometheus } => {
            let policy = policy.load()?;
            let window = prometheus.window.unwrap_or_else(|| policy.rollout.as_ref().map_or(3600, |r| r.window_secs));
            let drift = drift::drift(&policy, &rollout::Prometheus::new(&prometheus.prometheus), window)?;
            match prometheus.format {
                Format::Json => out(&format!("{}\n", serde_json::to_string(&drift).map_err(|e| e.to_string())?)),
                Format::Text => out(&drift::render_text(&drift)),
            }
            // Traffic the contract does not describe is refused once schema enforces: a CI or
            // rollout step stops on it. Operations nobody called are reported, not failed.
            Ok(if drift.unknown_routes.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Package { dist, out: out_dir, tag } => {
            let digests = package::package(&dist, &out_dir, &tag)?;
            for (module, digest) in digests {
                out(&format!("{module} {}/{module}:{tag} sha256:{digest}\n", out_dir.display()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { policy, xds, dir, tls_cert, tls_key, client_ca, allow_client, form, modules, interval_ms, once } => {
            let tls = match (tls_cert, tls_key, client_ca) {
                (Some(cert), Some(key), Some(client_ca)) => Some(xds::Tls { cert, key, client_ca, allowed: SpiffeIds::new(allow_client)? }),
                _ => None,
            };
            let options = serve::ServeOptions {
                policy: policy.policy,
                openapi: policy.openapi,
                form,
                modules_dir: modules,
                dir,
                xds,
                tls,
                interval: std::time::Duration::from_millis(interval_ms.max(50)),
                once,
            };
            serve::serve(&options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditAction::Verify { files, format, keys }) => {
            let mut texts = Vec::with_capacity(files.len());
            for file in &files {
                let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
                texts.push((file.display().to_string(), text));
            }
            let keys = keys.iter().map(|k| verifying_key(k)).collect::<Result<Vec<_>, _>>()?;
            let verified = meshward_core::audit::verify(&texts, &keys);
            match format {
                Format::Text => out(&audit_text(&verified)),
                Format::Json => out(&format!("{}\n", audit_json(&verified))),
            }
            // No record at all proves nothing: the log may have been emptied.
            Ok(if verified.findings.is_empty() && verified.records > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Audit(AuditAction::Keygen) => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed)).map_err(|e| format!("/dev/urandom: {e}"))?;
            let (private, public, kid) = meshward_core::audit::signing::key_pair(seed);
            out(&format!("{}\n", serde_json::json!({"private_key": private, "public_key": public, "kid": kid})));
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshward", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("meshward: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_repeated_flags_behave() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("meshward").chain(args.iter().copied())).map(|c| c.command);
        // --cluster accumulates; any other flag given twice takes its last value.
        let Ok(Command::Render(RenderTarget::Envoy { cluster, modules, .. })) =
            parse(&["render", "envoy", "p.yaml", "--cluster", "a=b:1", "--modules", "x", "--cluster", "c=d:2", "--modules", "y"])
        else {
            panic!("render envoy did not parse");
        };
        assert_eq!(cluster, vec![("a".into(), "b".into(), 1), ("c".into(), "d".into(), 2)]);
        assert_eq!(modules, PathBuf::from("y"));
        for (args, error) in [
            (&["render", "envoy", "p.yaml", "--cluster", "a"][..], "\"a\" is not NAME=HOST:PORT"),
            (&["render", "envoy", "p.yaml", "--upstream", "h:port"], "\"port\" is not a port"),
            (&["serve", "p.yaml", "--xds", "localhost:1"], "is not IP:PORT"),
            (&["rollout", "status", "p.yaml", "--prometheus", "u", "--window", "1h"], "--window <SECONDS>"),
        ] {
            let e = parse(args).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(error), "{args:?}: {e}");
        }
    }
}
