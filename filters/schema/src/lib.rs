//! `meshward_schema.wasm`: the service's OpenAPI contract enforced in the sidecar.
//!
//! Thin on purpose: the policy is `meshward_schema::SchemaPolicy`, the plumbing
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_schema::SchemaPolicy>>();
}}
