//! `meshward_graphql.wasm`: persisted GraphQL operations only, within depth, alias and batch
//! limits, introspection off.
//!
//! Thin on purpose: the policy is `meshward_graphql::GraphqlPolicy`, the plumbing
//! `meshward_runtime`. Configuration is documented in the repository README.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshward_runtime::register::<meshward_runtime::Single<meshward_graphql::GraphqlPolicy>>();
}}
