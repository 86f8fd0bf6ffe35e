// Runs a wasm32-wasip1 test binary under Node's WASI (cargo's target runner):
//   CARGO_TARGET_WASM32_WASIP1_RUNNER="node tests/wasi-runner.mjs" cargo test --target wasm32-wasip1
// so the pure crates' unit tests run compiled for the target the filters ship on.
import { readFile } from "node:fs/promises";
import { argv, env, exit } from "node:process";
import { WASI } from "node:wasi";

const [wasmPath, ...args] = argv.slice(2);
const wasi = new WASI({
  version: "preview1",
  args: [wasmPath, ...args],
  env,
  // Tests read fixtures by absolute path (CARGO_MANIFEST_DIR); the checkout is read through "/".
  preopens: { "/": "/" },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
// Crates that link the proxy-wasm SDK import its hostcalls from "env"; unit tests use the
// in-memory FakeHost, so a hostcall reached here is a test bug and fails loudly.
const imports = wasi.getImportObject();
for (const { module: from, name, kind } of WebAssembly.Module.imports(module)) {
  if (from !== "wasi_snapshot_preview1" && kind === "function") {
    imports[from] ??= {};
    imports[from][name] = () => {
      throw new Error(`host function ${from}.${name} called in a unit test`);
    };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// Filter crates also export the proxy-wasm `_initialize`; a test binary is a command: `_start`.
const { memory, _start } = instance.exports;
exit(wasi.start({ exports: { memory, _start } }));
