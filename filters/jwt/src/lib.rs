//! `meshward_jwt.wasm`: JWT authentication in an Envoy / Istio sidecar.
//!
//! Thin on purpose: the policy is `meshward_jwt::JwtPolicy`, the filter plumbing is
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_jwt::JwtPolicy>>();
}}
