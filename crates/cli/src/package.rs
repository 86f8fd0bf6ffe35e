//! Modules as OCI images Istio's `WasmPlugin` pulls: the *compat* variant (one
//! `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`), which Istio's
//! image fetcher and every OCI registry take as is.
//!
//! Images are built byte for byte reproducibly (fixed tar header, gzip without a timestamp,
//! canonical JSON), so a module's image digest is known before anything is pushed: `render
//! istio` pins it, and the registry serves exactly that manifest. For `oci://` URLs Istio checks
//! `sha256` against the image *manifest* digest, not the module file's.

use std::path::Path;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The file name Istio looks for in the layer.
const PLUGIN_FILE: &str = "plugin.wasm";

/// Lower-case hex SHA-256, as OCI digests and Istio's `sha256` field spell it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(bytes)), "size": bytes.len()})
}

/// One module's image: its three blobs.
pub struct Image {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

/// A tar archive holding `plugin.wasm` only, every header field fixed.
fn plugin_tar(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE).map_err(|e| e.to_string())?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm).map_err(|e| e.to_string())?;
    builder.into_inner().map_err(|e| e.to_string())
}

impl Image {
    pub fn build(wasm: &[u8]) -> Result<Image, String> {
        let tar = plugin_tar(wasm)?;
        // No file name, mtime 0: the same module always gives the same layer.
        let mut gz: GzEncoder<Vec<u8>> = GzBuilder::new().mtime(0).write(Vec::new(), Compression::best());
        gz.write_all(&tar).map_err(|e| e.to_string())?;
        let layer = gz.finish().map_err(|e| e.to_string())?;
        let config = serde_json::to_vec(&json!({
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]},
        }))
        .map_err(|e| e.to_string())?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(CONFIG_TYPE, &config),
            "layers": [descriptor(LAYER_TYPE, &layer)],
        }))
        .map_err(|e| e.to_string())?;
        Ok(Image { manifest, config, layer })
    }

    /// The image (manifest) digest, hex: what Istio's `sha256` holds for an `oci://` URL.
    pub fn digest(&self) -> String {
        sha256_hex(&self.manifest)
    }

    /// Writes an OCI image layout at `dir` with the image tagged `tag` (`skopeo copy
    /// oci:DIR:TAG docker://...` pushes it).
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<(), String> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))?;
        for blob in [&self.manifest, &self.config, &self.layer] {
            let path = blobs.join(sha256_hex(blob));
            std::fs::write(&path, blob).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let mut manifest = descriptor(MANIFEST_TYPE, &self.manifest);
        manifest["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest]});
        for (name, value) in [("oci-layout", json!({"imageLayoutVersion": "1.0.0"})), ("index.json", index)] {
            let path = dir.join(name);
            std::fs::write(&path, value.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// The image digest of the module at `path`.
pub fn module_image_digest(path: &Path) -> Result<String, String> {
    let wasm = std::fs::read(path).map_err(|e| format!("{}: {e} (run `make build`, or give --dist)", path.display()))?;
    Image::build(&wasm).map(|image| image.digest())
}

/// `meshward package`: every `*.wasm` in `dist` as an OCI layout `out/<module>`, tagged `tag`.
/// Returns `(module, digest)` in name order.
pub fn package(dist: &Path, out: &Path, tag: &str) -> Result<Vec<(String, String)>, String> {
    let entries = std::fs::read_dir(dist).map_err(|e| format!("{}: {e} (run `make build`)", dist.display()))?;
    let mut modules: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    modules.sort();
    if modules.is_empty() {
        return Err(format!("{}: no .wasm modules (run `make build`)", dist.display()));
    }
    let mut digests = Vec::new();
    for path in modules {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let wasm = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let image = Image::build(&wasm)?;
        image.write_layout(&out.join(&name), tag)?;
        digests.push((name, image.digest()));
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn images_are_reproducible_and_hold_the_module_as_plugin_wasm() {
        let wasm = b"\0asm\x01\0\0\0 module bytes".to_vec();
        let (a, b) = (Image::build(&wasm).unwrap(), Image::build(&wasm).unwrap());
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(a.digest(), b.digest());
        assert_ne!(Image::build(b"\0asm\x01\0\0\0 other").unwrap().digest(), a.digest());
        let manifest: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], LAYER_TYPE);
        assert_eq!(manifest["layers"][0]["digest"], format!("sha256:{}", sha256_hex(&a.layer)));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(a.layer.as_slice()).read_to_end(&mut tar).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(PLUGIN_FILE));
        let mut back = Vec::new();
        entry.read_to_end(&mut back).unwrap();
        assert_eq!(back, wasm);
        assert!(entries.next().is_none());
    }
}
