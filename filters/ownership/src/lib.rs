//! `meshward_ownership.wasm`: BOLA / IDOR and scope checks in the sidecar, after the JWT filter.
//!
//! Thin on purpose: the policy is `meshward_ownership::OwnershipPolicy`, the plumbing
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_ownership::OwnershipPolicy>>();
}}
