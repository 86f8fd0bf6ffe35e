//! Which bundle module runs a policy. `meshward.wasm` holds every stage; `make build` also
//! builds editions with fewer (`meshward.<edition>.wasm`), each naming its stages in its
//! `meshward.stages` custom section. Every Envoy holds V8's compiled code for all of a module's
//! functions, whether its stages run or not, so the smallest module holding the policy's stages
//! is the one to deploy (BENCHMARKS.md, footprint).

use std::path::Path;

use meshward_bundle_filter::STAGES_SECTION;

/// The module holding every stage: deployed when no edition in the directory holds the policy's
/// stages (or the directory has none).
pub const FULL: &str = "meshward";

/// The file stem of the smallest bundle module in `dir` holding every one of `stages`.
pub fn pick(dir: &Path, stages: &[&str]) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else { return FULL.to_string() };
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let stem = path.file_stem()?.to_str()?.to_string();
            if path.extension()? != "wasm" || !(stem == FULL || stem.starts_with("meshward.")) {
                return None;
            }
            let bytes = std::fs::read(&path).ok()?;
            let held = stages_held(&bytes)?;
            stages.iter().all(|s| held.iter().any(|h| h == s)).then_some((bytes.len(), stem))
        })
        .min()
        .map_or_else(|| FULL.to_string(), |(_, stem)| stem)
}

/// The stages a module names in its `meshward.stages` sections (one per line); `None` for a
/// module without one (a separate filter's) or bytes that are not a wasm module.
pub fn stages_held(module: &[u8]) -> Option<Vec<String>> {
    let mut rest = module.strip_prefix(b"\0asm\x01\0\0\0")?;
    let mut held: Option<Vec<String>> = None;
    while let Some((&id, after_id)) = rest.split_first() {
        let (size, after_size) = leb128(after_id)?;
        let body = after_size.get(..size)?;
        rest = after_size.get(size..)?;
        if id != 0 {
            continue;
        }
        let (name_len, after_len) = leb128(body)?;
        if after_len.get(..name_len)? != STAGES_SECTION.as_bytes() {
            continue;
        }
        let lines = std::str::from_utf8(after_len.get(name_len..)?).ok()?;
        held.get_or_insert_with(Vec::new).extend(lines.lines().filter(|l| !l.is_empty()).map(String::from));
    }
    held
}

/// An unsigned LEB128 number of at most 32 bits, and the bytes after it.
fn leb128(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wasm module with these custom sections (name, content) and nothing else.
    fn module(sections: &[(&str, &str)]) -> Vec<u8> {
        let mut out = b"\0asm\x01\0\0\0".to_vec();
        for (name, content) in sections {
            let mut body = vec![u8::try_from(name.len()).unwrap()];
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(content.as_bytes());
            out.push(0);
            let mut size = body.len();
            loop {
                let byte = (size & 0x7f) as u8;
                size >>= 7;
                out.push(if size == 0 { byte } else { byte | 0x80 });
                if size == 0 {
                    break;
                }
            }
            out.extend_from_slice(&body);
        }
        out
    }

    #[test]
    fn a_module_names_its_stages_in_one_or_more_sections() {
        // (case, module, the stages it names)
        type Case<'a> = (&'a str, Vec<u8>, Option<Vec<&'a str>>);
        let cases: [Case; 6] = [
            ("one section", module(&[("meshward.stages", "jwt\nratelimit\n")]), Some(vec!["jwt", "ratelimit"])),
            ("sections concatenated", module(&[("meshward.stages", "jwt\n"), ("other", "x"), ("meshward.stages", "schema\n")]), Some(vec!["jwt", "schema"])),
            ("a long section (two-byte size)", module(&[("meshward.stages", &"jwt\n".repeat(100))]), Some(vec!["jwt"; 100])),
            ("a separate filter: no section", module(&[("producers", "rustc")]), None),
            ("not wasm", b"\x7fELF....".to_vec(), None),
            ("cut short", module(&[("meshward.stages", "jwt\n")])[..12].to_vec(), None),
        ];
        for (case, bytes, want) in cases {
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(stages_held(&bytes), want, "{case}");
        }
    }

    #[test]
    fn the_smallest_module_holding_every_stage_is_picked() {
        let dir = std::env::temp_dir().join(format!("meshward-editions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let all = "jwt\nwebhook\nidempotency\nschema\ngrpc\ngraphql\nownership\nratelimit\nsignatures\n";
        let write = |file: &str, bytes: Vec<u8>| std::fs::write(dir.join(file), bytes).unwrap();
        write("meshward.wasm", module(&[("meshward.stages", all), ("pad", &"x".repeat(300))]));
        write("meshward.openapi.wasm", module(&[("meshward.stages", "jwt\nschema\nownership\nratelimit\nsignatures\n"), ("pad", &"x".repeat(200))]));
        // The openapi stages without public-key signatures: smaller, for native providers only.
        write("meshward.native.wasm", module(&[("meshward.stages", "jwt\nschema\nownership\nratelimit\n"), ("pad", &"x".repeat(100))]));
        write("meshward.lite.wasm", module(&[("meshward.stages", "jwt\nownership\nratelimit\nsignatures\n")]));
        // A separate filter's module is never a bundle, however small.
        write("meshward_jwt.wasm", module(&[("producers", "rustc")]));
        let cases: [(&[&str], &str); 7] = [
            (&["jwt", "ratelimit", "signatures"], "meshward.lite"),
            // A module with signatures serves providers on native jwt_authn too; smallest wins.
            (&["jwt", "ratelimit"], "meshward.lite"),
            (&["jwt", "schema", "ownership", "ratelimit", "signatures"], "meshward.openapi"),
            (&["jwt", "schema", "ownership", "ratelimit"], "meshward.native"),
            (&["schema"], "meshward.native"),
            (&["jwt", "grpc"], "meshward"),
            (&[], "meshward.lite"),
        ];
        for (stages, want) in cases {
            assert_eq!(pick(&dir, stages), want, "{stages:?}");
        }
        assert_eq!(pick(&dir.join("missing"), &["jwt"]), FULL, "no directory: the module holding every stage");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
