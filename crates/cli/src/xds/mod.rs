//! `meshward serve --xds`: Envoy's Aggregated Discovery Service (ADS) and Extension Config
//! Discovery Service (ECDS) over gRPC. Envoys rendered with `render envoy --xds HOST:PORT` open
//! one ADS stream and subscribe to their meshward filters' configurations by name on it (Envoys
//! rendered before ADS open one ECDS stream per filter); every accepted policy version is pushed
//! to every subscribed Envoy, which applies it to new requests without a restart and
//! acknowledges or rejects it (both are logged).

mod file_limit;
mod listener;
pub mod proto;
mod server;
mod session;
mod grpc;

pub use file_limit::raise_file_limit;
pub use listener::capacity;
pub use server::{check_tls, serve, Tls};
pub use session::Snapshot;

use meshward_runtime::HOLD_HEADERS_ENV;
use proto::{Any, AsyncDataSource, BoolValue, DataSource, EnvironmentVariables, FailurePolicy, PluginConfig, StringValue, TypedExtensionConfig, VmConfig, Wasm, TYPED_EXTENSION_CONFIG};

use crate::render::WasmPlugin;

/// A policy version's filter configurations as ECDS resources.
pub fn snapshot(version: &str, plugins: &[WasmPlugin]) -> Snapshot {
    Snapshot {
        version: version.to_string(),
        resources: plugins.iter().map(|p| (p.filter_name.clone(), proto::resource_entry(&extension_config(p)))).collect(),
    }
}

/// One filter's configuration as the ECDS resource Envoy asks for by the filter's name; the same
/// fields the bootstrap and the ECDS files carry (`WasmPlugin::to_json`).
pub fn extension_config(plugin: &WasmPlugin) -> Any {
    let wasm = Wasm {
        config: Some(PluginConfig {
            name: plugin.module.clone(),
            root_id: plugin.module.clone(),
            vm_config: Some(VmConfig {
                vm_id: plugin.module.clone(),
                runtime: crate::render::WASM_RUNTIME.to_string(),
                code: Some(AsyncDataSource { local: Some(DataSource { filename: plugin.filename.clone() }) }),
                environment_variables: Some(EnvironmentVariables {
                    host_env_keys: plugin.host_env_keys.clone(),
                    key_values: [(HOLD_HEADERS_ENV.to_string(), "true".to_string())].into(),
                }),
            }),
            configuration: Some(Any::pack(
                "type.googleapis.com/google.protobuf.StringValue",
                &StringValue { value: plugin.configuration.clone() },
            )),
            // A VM that fails must not let traffic through.
            failure_policy: FailurePolicy::FailClosed as i32,
            allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
        }),
    };
    Any::pack(
        TYPED_EXTENSION_CONFIG,
        &TypedExtensionConfig { name: plugin.filter_name.clone(), typed_config: Some(Any::pack(crate::render::WASM_TYPE, &wasm)) },
    )
}
