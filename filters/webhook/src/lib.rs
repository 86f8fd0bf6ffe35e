//! `meshward_webhook.wasm`: webhook signature, freshness and replay checks in the sidecar.
//!
//! Thin on purpose: the policy is `meshward_webhook::WebhookPolicy`, the plumbing
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_webhook::WebhookPolicy>>();
}}
