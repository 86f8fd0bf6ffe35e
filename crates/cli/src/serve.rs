//! `meshward serve`: keeps the filters' configurations of running Envoys current with the
//! policy file, through Envoy's Extension Config Discovery (ECDS) from the filesystem.
//!
//! Envoy rendered with `render envoy --ecds DIR` reads each meshward filter's configuration from
//! `DIR/meshward.<filter>.json` and watches the directory. `serve` watches the policy and its
//! contract; when either changes it compiles the policy with the modules' own parsers and, only
//! if every stage is accepted, replaces the files atomically. Envoy applies the new
//! configuration to new requests without a restart; requests in flight finish under the old one.
//! A policy that does not compile is refused whole and the last good version stays served.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::compile::compile_policy;
use crate::policy::Policy;
use crate::render::{ecds, filter_names, Form};

pub struct ServeOptions {
    pub policy: PathBuf,
    pub openapi: Option<PathBuf>,
    pub form: Form,
    pub modules_dir: PathBuf,
    pub dir: PathBuf,
    pub interval: Duration,
    /// Write the current policy once and return (for scripts and CI).
    pub once: bool,
}

/// What a file looked like when last read: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|m| m.modified().ok().map(|t| (t, m.len())))
}

/// The policy, refused whole if any stage's module would refuse its configuration.
fn load(options: &ServeOptions) -> Result<Policy, String> {
    let policy = Policy::load(&options.policy, options.openapi.as_deref()).map_err(|e| e.to_string())?;
    compile_policy(&policy)?;
    Ok(policy)
}

fn write_atomically(path: &Path, value: &Value) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    // A rename is atomic: Envoy never reads half a file.
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the policy's ECDS files; returns the version written.
fn publish(options: &ServeOptions, policy: &Policy) -> Result<String, String> {
    let mut hasher = Sha256::new();
    for stage in &policy.stages {
        hasher.update(stage.kind.as_bytes());
        hasher.update(stage.config.to_string().as_bytes());
    }
    let version: String = hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    for (path, content) in ecds(policy, options.form, &options.modules_dir, &options.dir, &version) {
        write_atomically(&path, &content)?;
    }
    Ok(version)
}

pub fn serve(options: &ServeOptions) -> Result<(), String> {
    std::fs::create_dir_all(&options.dir).map_err(|e| format!("{}: {e}", options.dir.display()))?;
    let mut seen: Option<(Stamp, Stamp)> = None;
    let mut contract_path: Option<PathBuf> = None;
    // The filters the running Envoys were rendered with, and the version they have.
    let mut served: Option<(Vec<String>, String)> = None;
    loop {
        let now = (stamp(&options.policy), contract_path.as_deref().and_then(stamp));
        if seen != Some(now) {
            seen = Some(now);
            match load(options) {
                Ok(policy) => {
                    contract_path = policy.contract.as_ref().map(|c| c.path.clone());
                    seen = Some((now.0, contract_path.as_deref().and_then(stamp)));
                    let names = filter_names(&policy, options.form);
                    match &served {
                        Some((old, version)) if *old != names => eprintln!(
                            "meshward serve: refused {}: its stages ({}) differ from the running filter chain ({}); \
                             re-render the Envoy configuration. Still serving {version}",
                            options.policy.display(),
                            names.join(", "),
                            old.join(", ")
                        ),
                        _ => {
                            let version = publish(options, &policy)?;
                            eprintln!("meshward serve: serving {version} ({}) in {}", names.join(", "), options.dir.display());
                            served = Some((names, version));
                        }
                    }
                }
                Err(e) => match &served {
                    Some((_, version)) => eprintln!("meshward serve: refused {}: {e}. Still serving {version}", options.policy.display()),
                    None => return Err(e),
                },
            }
        }
        if options.once {
            return Ok(());
        }
        std::thread::sleep(options.interval);
    }
}
