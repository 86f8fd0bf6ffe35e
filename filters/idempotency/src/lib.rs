//! `meshward_idempotency.wasm`: idempotency keys on writes, enforced in the sidecar.
//!
//! Thin on purpose: the policy is `meshward_idempotency::IdempotencyPolicy`, the plumbing
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_idempotency::IdempotencyPolicy>>();
}}
