//! A proxy-wasm host that runs meshward's modules as Envoy 1.40 runs them, inside the `meshward`
//! command: the same `.wasm` bytes, configured with the same text, each request driven through
//! the filter chain the way Envoy's filter manager drives it. `meshward test` and `meshward
//! replay` run policies here, so the CLI never re-implements what a module decides.
//!
//! wasmtime compiles a module once ([`Module`]); a [`Chain`] starts one VM per filter and runs
//! any number of exchanges through them, on a clock the caller sets ([`Clock`]). The calls the
//! filters dispatch (JWKS, the fleet engine) are answered by the caller ([`Calls`]).

mod abi;
mod stream;
mod vm;

pub use stream::{grpc_cluster, Call, CallKind, Calls, Chain, Filter, Headers, LocalReply, Message, NoCalls, Outcome, Request, Stream, Upstream};
pub use vm::{Clock, Metric, Module, Vm, VmConfig, VmError};
