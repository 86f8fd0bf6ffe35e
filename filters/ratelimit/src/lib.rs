//! `meshward_ratelimit.wasm`: per-principal rate limits in the sidecar, local or fleet-wide.
//!
//! Thin on purpose: the policy is `meshward_ratelimit::RateLimitPolicy`, the plumbing
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_ratelimit::RateLimitPolicy>>();
}}
