//! `meshward_grpc.wasm`: gRPC method allowlist and message checks in the sidecar.
//!
//! Thin on purpose: the policy is `meshward_grpc::GrpcPolicy`, the plumbing
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_grpc::GrpcPolicy>>();
}}
