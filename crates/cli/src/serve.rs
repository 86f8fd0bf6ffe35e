//! `meshward serve`: keeps the filters' configurations of running Envoys current with the
//! policy file, through Envoy's Extension Config Discovery (ECDS): over gRPC (`--xds`, Envoys
//! rendered with `render envoy --xds`) or through files (`--dir`, Envoys rendered with
//! `render envoy --ecds`).
//!
//! It watches the policy and the files it reads (its contract, a gRPC descriptor set, a GraphQL
//! schema); when any changes it compiles the policy with the modules' own parsers and, only if
//! every stage is accepted, pushes the new version: to every subscribed Envoy, or by replacing the files atomically. Envoy applies it to new requests
//! without a restart; requests in flight finish under the old one. A policy that does not
//! compile is refused whole and the last good version stays served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::compile::compile_policy;
use crate::policy::Policy;
use crate::render::{check_form, ecds, wasm_plugins, Form, WasmPlugin};
use crate::xds;

pub struct ServeOptions {
    pub policy: PathBuf,
    pub openapi: Option<PathBuf>,
    pub form: Form,
    pub modules_dir: PathBuf,
    /// Write ECDS files here.
    pub dir: Option<PathBuf>,
    /// Serve ECDS over gRPC here.
    pub xds: Option<SocketAddr>,
    /// ... over mTLS, to proxies with these SPIFFE IDs.
    pub tls: Option<xds::Tls>,
    pub interval: Duration,
    /// Write the current policy once and return (for scripts and CI; files only).
    pub once: bool,
}

/// What a file looked like when last read: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|m| m.modified().ok().map(|t| (t, m.len())))
}

/// An accepted policy version, ready to push.
#[derive(Debug, PartialEq)]
struct Version {
    id: String,
    plugins: Vec<WasmPlugin>,
}

impl Version {
    fn names(&self) -> Vec<&str> {
        self.plugins.iter().map(|p| p.filter_name.as_str()).collect()
    }
}

/// The policy file and the files it reads (contract, descriptor set, schema), watched.
struct Watcher<'a> {
    options: &'a ServeOptions,
    seen: Option<(Stamp, Vec<Stamp>)>,
    /// A change seen once, read when the next poll finds the files unchanged.
    settling: Option<(Stamp, Vec<Stamp>)>,
    inputs: Vec<PathBuf>,
    /// The filters the running Envoys were rendered with, and the version they have.
    served: Option<(Vec<String>, String)>,
    /// Why the files as they are could not be read or pushed, when another try may succeed (a
    /// file missing or not readable yet, too many open files, a full disk): every poll tries
    /// again until it works, so such a change is never lost.
    retrying: Option<String>,
}

/// Why a policy version was not taken.
struct Refusal {
    message: String,
    /// Not for what the policy says: the same files are read again at the next poll.
    retry: bool,
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal { message, retry: false }
    }
}

impl<'a> Watcher<'a> {
    fn new(options: &'a ServeOptions) -> Watcher<'a> {
        Watcher { options, seen: None, settling: None, inputs: Vec::new(), served: None, retrying: None }
    }

    /// The policy as a version, refused whole if any stage's module would refuse its
    /// configuration.
    fn load(&self) -> Result<(Policy, Version), Refusal> {
        let options = self.options;
        let policy = Policy::load(&options.policy, options.openapi.as_deref())
            .map_err(|e| Refusal { retry: e.unreadable, message: e.message })?;
        compile_policy(&policy)?;
        check_form(&policy, options.form)?;
        let plugins = wasm_plugins(&policy, options.form, &options.modules_dir)?;
        let version = Version { id: version_id(&plugins), plugins };
        Ok((policy, version))
    }

    /// A new version when the policy or a file it reads changed and was accepted. Refusals are
    /// logged and the last version stays; only a first policy that cannot be used is an error.
    ///
    /// A change is read only once the files have stayed as they are for one interval: a policy
    /// written in place (not renamed into place) is never read half-written, where a truncated
    /// rule list could still parse and be pushed.
    fn poll(&mut self) -> Result<Option<Version>, String> {
        let options = self.options;
        let now = (stamp(&options.policy), self.inputs.iter().map(|p| stamp(p)).collect::<Vec<_>>());
        let changed = settled(&self.seen, &mut self.settling, &now);
        if !changed && (self.retrying.is_none() || self.settling.is_some()) {
            return Ok(None);
        }
        self.seen = Some(now.clone());
        let (policy, version) = match (self.load(), &self.served) {
            (Ok(loaded), _) => loaded,
            (Err(e), Some((_, id))) if e.retry => {
                if self.retrying.as_ref() != Some(&e.message) {
                    eprintln!("meshward serve: could not read {}: {}; trying again every interval. Still serving {id}", options.policy.display(), e.message);
                }
                self.retrying = Some(e.message);
                return Ok(None);
            }
            (Err(e), Some((_, id))) => {
                self.retrying = None;
                eprintln!("meshward serve: refused {}: {}. Still serving {id}", options.policy.display(), e.message);
                return Ok(None);
            }
            (Err(e), None) => return Err(e.message),
        };
        if self.retrying.take().is_some() {
            eprintln!("meshward serve: read {} again", options.policy.display());
        }
        self.inputs = policy.inputs.clone();
        self.seen = Some((now.0, self.inputs.iter().map(|p| stamp(p)).collect()));
        let names: Vec<String> = version.names().into_iter().map(String::from).collect();
        match &self.served {
            Some((old, id)) if *old != names => {
                eprintln!(
                    "meshward serve: refused {}: its filters ({}) differ from the running filter chain ({}); \
                     re-render the Envoy configuration. Still serving {id}",
                    options.policy.display(),
                    names.join(", "),
                    old.join(", ")
                );
                Ok(None)
            }
            Some((_, id)) if *id == version.id => Ok(None),
            _ => {
                self.served = Some((names, version.id.clone()));
                Ok(Some(version))
            }
        }
    }

    /// `version` could not be pushed (its files not written): it is tried again at the next
    /// poll, as if never served.
    fn unpublished(&mut self, version: &Version, message: String) {
        eprintln!("meshward serve: could not push {}: {message}; trying again every interval", version.id);
        if let Some((_, id)) = &mut self.served {
            id.clear();
        }
        self.retrying = Some(message);
    }
}

/// A short digest of everything pushed: equal versions are equal configurations.
fn version_id(plugins: &[WasmPlugin]) -> String {
    let mut hasher = Sha256::new();
    for p in plugins {
        for field in [&p.filter_name, &p.module, &p.filename, &p.configuration].into_iter().chain(&p.host_env_keys) {
            hasher.update(field.as_bytes());
            hasher.update([0]);
        }
    }
    hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn write_atomically(path: &Path, value: &Value) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    // A rename is atomic: Envoy never reads half a file.
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Pushes a version where this `serve` pushes: files (now) and the xDS snapshot (its streams
/// send it to every subscribed Envoy).
fn publish(options: &ServeOptions, version: &Version, xds: Option<&tokio::sync::watch::Sender<Arc<xds::Snapshot>>>) -> Result<(), String> {
    if let Some(dir) = &options.dir {
        for (path, content) in ecds(&version.plugins, dir, &version.id) {
            write_atomically(&path, &content)?;
        }
    }
    if let Some(sender) = xds {
        sender.send_replace(Arc::new(xds::snapshot(&version.id, &version.plugins)));
    }
    let to = [options.dir.as_ref().map(|d| d.display().to_string()), options.xds.map(|_| "xDS".to_string())];
    eprintln!("meshward serve: serving {} ({}) via {}", version.id, version.names().join(", "), to.into_iter().flatten().collect::<Vec<_>>().join(" and "));
    Ok(())
}

pub fn serve(options: &ServeOptions) -> Result<(), String> {
    if options.dir.is_none() && options.xds.is_none() {
        return Err("serve needs --xds HOST:PORT (Envoys rendered with --xds) or --dir DIR (rendered with --ecds)".into());
    }
    if options.tls.is_some() && options.xds.is_none() {
        return Err("--tls-cert, --tls-key and --client-ca secure the xDS server: they need --xds".into());
    }
    if options.once && options.xds.is_some() {
        return Err("--once writes the ECDS files and returns; it needs --dir, not --xds".into());
    }
    if let Some(dir) = &options.dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut watcher = Watcher::new(options);
    let first = watcher.poll()?.ok_or("the policy could not be read")?;
    let Some(address) = options.xds else {
        publish(options, &first, None)?;
        if options.once {
            return Ok(());
        }
        loop {
            std::thread::sleep(options.interval);
            if let Some(version) = watcher.poll()? {
                if let Err(e) = publish(options, &version, None) {
                    watcher.unpublished(&version, e);
                }
            }
        }
    };
    let capacity = match xds::raise_file_limit() {
        Ok(files) => {
            let capacity = xds::capacity(files);
            eprintln!("meshward serve: open-file limit {files}: holds up to {capacity} proxy connections");
            capacity
        }
        Err(e) => return Err(format!("the open-file limit: {e}")),
    };
    let (sender, _) = tokio::sync::watch::channel(Arc::new(xds::snapshot(&first.id, &first.plugins)));
    publish(options, &first, Some(&sender))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        if let Some(tls) = &options.tls {
            eprintln!("meshward serve: xDS over mTLS, for proxies whose SPIFFE ID is {}", tls.allowed.entries().join(" or "));
        }
        let watch = async {
            loop {
                tokio::time::sleep(options.interval).await;
                // Reading and compiling the policy blocks this thread; the streams run on the
                // runtime's workers meanwhile.
                if let Some(version) = tokio::task::block_in_place(|| watcher.poll())? {
                    if let Err(e) = publish(options, &version, Some(&sender)) {
                        watcher.unpublished(&version, e);
                    }
                }
            }
        };
        tokio::pin!(watch);
        let mut address = address;
        loop {
            // Certificates rotate (Istio, SPIRE, cert-manager rewrite the files): when the
            // files change and make a usable configuration, the server starts again with them
            // on the same address. Open streams keep their connection; new ones get the new
            // certificate.
            let files = options.tls.as_ref().map(tls_stamps);
            let bound = std::cell::Cell::new(None);
            let server = xds::serve(address, options.tls.as_ref(), capacity, sender.subscribe(), |b| {
                bound.set(Some(b));
                eprintln!("meshward serve: xDS listening on {b}");
            });
            let rotated = rotation(options, files);
            tokio::select! {
                result = server => return result,
                result = &mut watch => return result,
                () = rotated => eprintln!("meshward serve: the TLS certificate, key or client CA changed: serving with the new ones"),
            }
            address = bound.get().unwrap_or(address);
        }
    })
}

/// Whether files now stamped `now` differ from how they were `seen` and have stayed as they are
/// for one look (`settling` holds a change seen once): a file written in place is never read
/// half-written. Nothing seen yet reads at once.
fn settled<T: PartialEq + Clone>(seen: &Option<T>, settling: &mut Option<T>, now: &T) -> bool {
    if seen.as_ref() == Some(now) {
        *settling = None;
        return false;
    }
    if seen.is_some() && settling.as_ref() != Some(now) {
        *settling = Some(now.clone());
        return false;
    }
    *settling = None;
    true
}

/// The TLS files as last seen.
fn tls_stamps(tls: &xds::Tls) -> [Stamp; 3] {
    [stamp(&tls.cert), stamp(&tls.key), stamp(&tls.client_ca)]
}

/// Returns once the TLS files changed, stayed as they are for one interval (never read
/// half-written), and make a configuration the server can run with; never without `--tls-*`.
async fn rotation(options: &ServeOptions, files: Option<[Stamp; 3]>) {
    let (Some(tls), Some(mut running)) = (&options.tls, files) else { return std::future::pending().await };
    let mut settling = None;
    loop {
        tokio::time::sleep(options.interval).await;
        let now = tls_stamps(tls);
        if !settled(&Some(running), &mut settling, &now) {
            continue;
        }
        match xds::check_tls(tls) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("meshward serve: refused the new TLS files: {e}; still serving the previous certificate");
                running = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "service: s\nstages:\n  - ratelimit:\n      rules:\n        - name: all\n          match: { prefix: / }\n          key: [client_ip]\n          limit: { requests: 1, per: 1s }\n        - name: writes\n          match: { prefix: /, methods: [POST] }\n          key: [client_ip]\n          limit: { requests: 1, per: 1s }\n";

    /// `serve --dir` of `policy`, polled by hand.
    fn file_options(dir: &Path, policy: &Path) -> ServeOptions {
        ServeOptions {
            policy: policy.to_path_buf(),
            openapi: None,
            form: Form::Bundle,
            modules_dir: dir.to_path_buf(),
            dir: Some(dir.to_path_buf()),
            xds: None,
            tls: None,
            interval: Duration::from_millis(100),
            once: false,
        }
    }

    #[test]
    fn a_change_is_read_only_once_the_file_stays_as_it_is() {
        let dir = std::env::temp_dir().join(format!("meshward-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.yaml");
        let first_rule_only = &FULL[..FULL.find("        - name: writes").unwrap()];
        std::fs::write(&policy, first_rule_only).unwrap();
        let options = file_options(&dir, &policy);
        let mut watcher = Watcher::new(&options);
        let first = watcher.poll().unwrap().expect("the first policy is read at once");
        assert_eq!(watcher.poll(), Ok(None));

        // Written in place: half of it (which parses) is seen, then the rest.
        std::fs::write(&policy, &FULL[..FULL.len() - 40]).unwrap();
        assert_eq!(watcher.poll(), Ok(None), "a file just changed is not read yet");
        std::fs::write(&policy, FULL).unwrap();
        assert_eq!(watcher.poll(), Ok(None), "it changed again since");
        let full = watcher.poll().unwrap().expect("unchanged for one interval: read");
        assert_ne!(full.id, first.id);
        assert!(full.plugins[0].configuration.contains("\"writes\""), "{}", full.plugins[0].configuration);
        assert_eq!(watcher.poll(), Ok(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_the_policy_reads_is_watched_too() {
        let dir = std::env::temp_dir().join(format!("meshward-serve-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.yaml");
        let schema = dir.join("schema.graphql");
        std::fs::write(&schema, "type Query { a: Int }").unwrap();
        std::fs::write(&policy, "service: library\nstages:\n  - graphql: { schema_file: schema.graphql, allow_raw_documents: true }\n").unwrap();
        let options = file_options(&dir, &policy);
        let mut watcher = Watcher::new(&options);
        let first = watcher.poll().unwrap().expect("the first policy is read at once");
        assert_eq!(watcher.inputs, vec![schema.clone()]);
        std::fs::write(&schema, "type Query { a: Int b: String }").unwrap();
        assert_eq!(watcher.poll(), Ok(None), "a file just changed is not read yet");
        let next = watcher.poll().unwrap().expect("the schema changed: a new version");
        assert_ne!(next.id, first.id);
        assert!(next.plugins[0].configuration.contains("b: String"), "{}", next.plugins[0].configuration);
        // A schema the module refuses is refused whole; the last version stays.
        std::fs::write(&schema, "type Query { a: Missing }").unwrap();
        assert_eq!(watcher.poll(), Ok(None));
        assert_eq!(watcher.poll(), Ok(None), "refused: still serving the last version");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_change_that_could_not_be_read_is_read_once_it_can_be() {
        let dir = std::env::temp_dir().join(format!("meshward-serve-retry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.yaml");
        std::fs::write(&policy, "service: library\nstages:\n  - graphql: { schema: 'type Query { a: Int }', allow_raw_documents: true }\n").unwrap();
        let options = file_options(&dir, &policy);
        let mut watcher = Watcher::new(&options);
        let first = watcher.poll().unwrap().expect("the first policy is read at once");

        // The policy now names a schema file that is not there yet (a checkout in progress, a
        // volume not mounted, too many open files): not refused for good.
        std::fs::write(&policy, "service: library\nstages:\n  - graphql: { schema_file: schema.graphql, allow_raw_documents: true }\n").unwrap();
        assert_eq!(watcher.poll(), Ok(None), "a file just changed is not read yet");
        assert_eq!(watcher.poll(), Ok(None), "the schema cannot be read");
        assert!(watcher.retrying.as_deref().is_some_and(|e| e.contains("schema.graphql")), "{:?}", watcher.retrying);
        assert_eq!(watcher.poll(), Ok(None), "still not there");
        // The policy file itself does not change again: the change is not lost.
        std::fs::write(dir.join("schema.graphql"), "type Query { a: Int b: String }").unwrap();
        let next = watcher.poll().unwrap().expect("read once it can be");
        assert_ne!(next.id, first.id);
        assert!(next.plugins[0].configuration.contains("b: String"), "{}", next.plugins[0].configuration);
        assert_eq!(watcher.retrying, None);
        assert_eq!(watcher.poll(), Ok(None));

        // A policy refused for what it says is not read again until it changes.
        std::fs::write(&policy, "service: library\nstages:\n  - graphql: { schema_file: schema.graphql, max_depth: -1 }\n").unwrap();
        assert_eq!(watcher.poll(), Ok(None));
        assert_eq!(watcher.poll(), Ok(None), "refused");
        assert_eq!(watcher.retrying, None);

        // A version that could not be pushed is pushed at the next poll.
        std::fs::write(&policy, "service: library\nstages:\n  - graphql: { schema_file: schema.graphql, allow_raw_documents: true, max_depth: 3 }\n").unwrap();
        assert_eq!(watcher.poll(), Ok(None));
        let unpushed = watcher.poll().unwrap().expect("a new version");
        watcher.unpublished(&unpushed, "No space left on device".into());
        assert_eq!(watcher.poll(), Ok(Some(unpushed)), "tried again");
        assert_eq!(watcher.poll(), Ok(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
