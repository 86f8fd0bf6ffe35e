//! `meshward`: policy as code for the meshward filters.
//!
//! ```text
//! meshward check   POLICY [--openapi SPEC] [--envoy ENVOY_CONFIG] [--format text|json]
//! meshward compile POLICY [--openapi SPEC] [--out DIR]
//! meshward render envoy POLICY [--form separate|bundle] [--modules DIR] [--listen PORT]
//!                              [--admin PORT] [--upstream HOST:PORT] [--cluster NAME=HOST:PORT]...
//!                              [--xds HOST:PORT | --ecds DIR]
//! meshward render istio POLICY [--form separate|bundle] [--dist DIR]
//! meshward package [--dist DIR] --out DIR [--tag TAG]
//! meshward rollout status|promote POLICY --prometheus URL [--window SECONDS] [--format text|json]
//!                         [--form separate|bundle] [--dist DIR]
//! meshward drift   POLICY --prometheus URL [--window SECONDS] [--format text|json]
//! meshward serve   POLICY (--xds IP:PORT | --dir DIR) [--form separate|bundle] [--modules DIR]
//!                         [--interval-ms N] [--once true]
//! ```
//!
//! Exit codes: 0 fine, 1 the check found errors, 2 the command or policy cannot be used.

mod check;
mod compile;
mod drift;
mod package;
mod policy;
mod render;
mod rollout;
mod serve;
mod xds;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use policy::Policy;
use render::{Discovery, EnvoyOptions, Form};
use serde_json::Value;

const USAGE: &str = "usage:
  meshward check   POLICY [--openapi SPEC] [--envoy ENVOY_CONFIG] [--format text|json]
  meshward compile POLICY [--openapi SPEC] [--out DIR]
  meshward render envoy POLICY [--form separate|bundle] [--modules DIR] [--listen PORT] [--admin PORT]
                               [--upstream HOST:PORT] [--cluster NAME=HOST:PORT]...
                               [--xds HOST:PORT | --ecds DIR]
  meshward render istio POLICY [--form separate|bundle] [--dist DIR]
  meshward package [--dist DIR] --out DIR [--tag TAG]
  meshward rollout status|promote POLICY --prometheus URL [--window SECONDS] [--format text|json]
                                  [--form separate|bundle] [--dist DIR]
  meshward drift   POLICY --prometheus URL [--window SECONDS] [--format text|json]
  meshward serve   POLICY (--xds IP:PORT | --dir DIR) [--form separate|bundle] [--modules DIR]
                          [--interval-ms N] [--once true]";

/// Positional arguments and `--flag value` options, in order.
struct Args {
    positional: Vec<String>,
    options: Vec<(String, String)>,
}

impl Args {
    fn parse(raw: Vec<String>, known: &[&str]) -> Result<Args, String> {
        let mut args = Args { positional: Vec::new(), options: Vec::new() };
        let mut it = raw.into_iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if !known.contains(&name) {
                    return Err(format!("unknown option --{name}"));
                }
                let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                args.options.push((name.to_string(), value));
            } else {
                args.positional.push(a);
            }
        }
        Ok(args)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.options.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn policy(&self) -> Result<Policy, String> {
        let [path] = self.positional.as_slice() else { return Err("expected one POLICY file".into()) };
        Policy::load(Path::new(path), self.get("openapi").map(Path::new)).map_err(|e| e.to_string())
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn host_port(text: &str, what: &str) -> Result<(String, u16), String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{what}: {text:?} is not HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("{what}: {port:?} is not a port"))?;
    Ok((host.to_string(), port))
}

fn port(args: &Args, name: &str, default: u16) -> Result<u16, String> {
    args.get(name).map_or(Ok(default), |p| p.parse().map_err(|_| format!("--{name}: {p:?} is not a port")))
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

fn run(raw: Vec<String>) -> Result<ExitCode, String> {
    let Some((command, rest)) = raw.split_first() else { return Err(USAGE.into()) };
    match command.as_str() {
        "check" => {
            let args = Args::parse(rest.to_vec(), &["openapi", "format", "envoy"])?;
            let policy = args.policy()?;
            let mut findings = check::check(&policy);
            if let Some(envoy) = args.get("envoy") {
                let text = std::fs::read_to_string(envoy).map_err(|e| format!("{envoy}: {e}"))?;
                findings.extend(check::check_envoy(envoy, &text)?);
            }
            match args.get("format").unwrap_or("text") {
                "text" => out(&check::render_text(&findings)),
                "json" => out(&format!("{}\n", check::render_json(&findings))),
                other => return Err(format!("--format: {other:?} is not `text` or `json`")),
            }
            let failed = findings.iter().any(|f| f.severity == check::Severity::Error);
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        "compile" => {
            let args = Args::parse(rest.to_vec(), &["openapi", "out"])?;
            let policy = args.policy()?;
            // Compiling refuses what the modules would refuse; secrets may be absent here.
            compile::compile_policy(&policy).map_err(|e| format!("{}: {e}", policy.path.display()))?;
            let mut all = serde_json::Map::new();
            for stage in &policy.stages {
                all.insert(format!("meshward_{}", stage.kind), stage.config.clone());
            }
            all.insert("meshward".into(), policy.bundle_config());
            let fleet = compile::fleet_config(&policy).map_err(|e| format!("{}: {e}", policy.path.display()))?;
            match args.get("out") {
                Some(dir) => {
                    let dir = PathBuf::from(dir);
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
        "render" => {
            let Some((target, rest)) = rest.split_first() else { return Err(USAGE.into()) };
            match target.as_str() {
                "envoy" => {
                    let args = Args::parse(rest.to_vec(), &["openapi", "form", "modules", "listen", "admin", "upstream", "cluster", "ecds", "xds"])?;
                    let policy = args.policy()?;
                    let form = Form::parse(args.get("form").unwrap_or("separate"))?;
                    let clusters = args
                        .all("cluster")
                        .map(|c| {
                            let (name, address) = c.split_once('=').ok_or_else(|| format!("--cluster: {c:?} is not NAME=HOST:PORT"))?;
                            let (host, port) = host_port(address, "--cluster")?;
                            Ok((name.to_string(), host, port))
                        })
                        .collect::<Result<Vec<_>, String>>()?;
                    let options = EnvoyOptions {
                        modules_dir: Path::new(args.get("modules").unwrap_or("/etc/envoy/wasm")),
                        listen_port: port(&args, "listen", 10000)?,
                        admin_port: port(&args, "admin", 9901)?,
                        upstream: host_port(args.get("upstream").unwrap_or("127.0.0.1:8080"), "--upstream")?,
                        clusters,
                        discovery: match (args.get("ecds"), args.get("xds")) {
                            (Some(_), Some(_)) => return Err("--ecds and --xds: choose one way for `meshward serve` to reach Envoy".into()),
                            (Some(dir), None) => Some(Discovery::Files(Path::new(dir))),
                            (None, Some(address)) => {
                                let (host, port) = host_port(address, "--xds")?;
                                Some(Discovery::Xds(host, port))
                            }
                            (None, None) => None,
                        },
                    };
                    let config = render::envoy(&policy, form, &options)?;
                    out(&render::to_yaml(&config));
                    Ok(ExitCode::SUCCESS)
                }
                "istio" => {
                    let args = Args::parse(rest.to_vec(), &["openapi", "form", "dist"])?;
                    let policy = args.policy()?;
                    let form = Form::parse(args.get("form").unwrap_or("separate"))?;
                    let docs = render::istio(&policy, form, Path::new(args.get("dist").unwrap_or("dist")))?;
                    out(&yaml_documents(&docs));
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(format!("render: unknown target `{other}` (envoy or istio)\n{USAGE}")),
            }
        }
        "rollout" => {
            let Some((action, rest)) = rest.split_first() else { return Err(USAGE.into()) };
            let args = Args::parse(rest.to_vec(), &["openapi", "prometheus", "window", "format", "form", "dist"])?;
            let policy = args.policy()?;
            let url = args.get("prometheus").ok_or_else(|| format!("rollout: --prometheus URL is required\n{USAGE}"))?;
            let window = args.get("window").map(|w| w.parse::<u64>().map_err(|_| format!("--window: {w:?} is not a number of seconds"))).transpose()?;
            let status = rollout::status(&policy, &rollout::Prometheus::new(url), window)?;
            match (action.as_str(), args.get("format").unwrap_or("text")) {
                ("status", "json") => out(&format!("{}\n", serde_json::to_string(&status).map_err(|e| e.to_string())?)),
                ("status", "text") => out(&rollout::render_text(&status)),
                ("status", other) => return Err(format!("--format: {other:?} is not `text` or `json`")),
                ("promote", _) => {
                    if !status.ready {
                        eprint!("{}", rollout::render_text(&status));
                        return Ok(ExitCode::from(1));
                    }
                    let form = Form::parse(args.get("form").unwrap_or("separate"))?;
                    let docs = render::istio(&rollout::enforcing(&policy), form, Path::new(args.get("dist").unwrap_or("dist")))?;
                    out(&yaml_documents(&docs));
                    eprint!("{}", rollout::render_text(&status));
                }
                (other, _) => return Err(format!("rollout: unknown action `{other}` (status or promote)\n{USAGE}")),
            }
            Ok(if status.ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        "drift" => {
            let args = Args::parse(rest.to_vec(), &["openapi", "prometheus", "window", "format"])?;
            let policy = args.policy()?;
            let url = args.get("prometheus").ok_or_else(|| format!("drift: --prometheus URL is required\n{USAGE}"))?;
            let window = match args.get("window") {
                Some(w) => w.parse::<u64>().map_err(|_| format!("--window: {w:?} is not a number of seconds"))?,
                None => policy.rollout.as_ref().map_or(3600, |r| r.window_secs),
            };
            let drift = drift::drift(&policy, &rollout::Prometheus::new(url), window)?;
            match args.get("format").unwrap_or("text") {
                "json" => out(&format!("{}\n", serde_json::to_string(&drift).map_err(|e| e.to_string())?)),
                "text" => out(&drift::render_text(&drift)),
                other => return Err(format!("--format: {other:?} is not `text` or `json`")),
            }
            // Traffic the contract does not describe is refused once schema enforces: a CI or
            // rollout step stops on it. Operations nobody called are reported, not failed.
            Ok(if drift.unknown_routes.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        "package" => {
            let args = Args::parse(rest.to_vec(), &["dist", "out", "tag"])?;
            if !args.positional.is_empty() {
                return Err(format!("package takes no positional arguments\n{USAGE}"));
            }
            let out_dir = args.get("out").ok_or_else(|| format!("package: --out DIR is required\n{USAGE}"))?;
            let tag = args.get("tag").unwrap_or(env!("CARGO_PKG_VERSION"));
            let digests = package::package(Path::new(args.get("dist").unwrap_or("dist")), Path::new(out_dir), tag)?;
            for (module, digest) in digests {
                out(&format!("{module} {out_dir}/{module}:{tag} sha256:{digest}\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        "serve" => {
            let args = Args::parse(rest.to_vec(), &["openapi", "form", "modules", "dir", "xds", "interval-ms", "once"])?;
            let [path] = args.positional.as_slice() else { return Err("expected one POLICY file".into()) };
            let interval = args.get("interval-ms").map_or(Ok(500), |v| v.parse::<u64>().map_err(|_| format!("--interval-ms: {v:?} is not a number")))?;
            let options = serve::ServeOptions {
                policy: PathBuf::from(path),
                openapi: args.get("openapi").map(PathBuf::from),
                form: Form::parse(args.get("form").unwrap_or("separate"))?,
                modules_dir: PathBuf::from(args.get("modules").unwrap_or("/etc/envoy/wasm")),
                dir: args.get("dir").map(PathBuf::from),
                xds: match args.get("xds") {
                    Some(a) => Some(a.parse().map_err(|_| format!("--xds: {a:?} is not IP:PORT (127.0.0.1:18000; port 0 picks one)"))?),
                    None => None,
                },
                interval: std::time::Duration::from_millis(interval.max(50)),
                once: args.get("once") == Some("true"),
            };
            serve::serve(&options)?;
            Ok(ExitCode::SUCCESS)
        }
        "help" | "--help" | "-h" => {
            out(&format!("{USAGE}\n"));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("meshward: {message}");
            ExitCode::from(2)
        }
    }
}
