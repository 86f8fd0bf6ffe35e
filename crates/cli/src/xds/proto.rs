//! The subset of Envoy's xDS and Wasm protos `meshward serve` speaks, as prost messages. Field
//! numbers are Envoy's (api/envoy/service/discovery/v3/discovery.proto,
//! api/envoy/extensions/wasm/v3/wasm.proto, api/envoy/config/core/v3/*.proto); fields meshward
//! never sets or reads are left out, which protobuf allows (unknown fields are skipped).

use prost::Message;

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

impl Any {
    pub fn pack<M: Message>(type_url: &str, message: &M) -> Any {
        Any { type_url: type_url.to_string(), value: message.encode_to_vec() }
    }
}

/// `google.rpc.Status`: why an Envoy rejected a configuration.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.config.core.v3.Node`: who is asking.
#[derive(Clone, PartialEq, Message)]
pub struct Node {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub cluster: String,
}

/// `envoy.service.discovery.v3.DiscoveryRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct DiscoveryRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, optional, tag = "2")]
    pub node: Option<Node>,
    #[prost(string, repeated, tag = "3")]
    pub resource_names: Vec<String>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<Status>,
}

/// `envoy.service.discovery.v3.DiscoveryResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DiscoveryResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Any>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// `envoy.config.core.v3.TypedExtensionConfig`: one ECDS resource.
#[derive(Clone, PartialEq, Message)]
pub struct TypedExtensionConfig {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub typed_config: Option<Any>,
}

pub const TYPED_EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// `envoy.extensions.filters.http.wasm.v3.Wasm`.
#[derive(Clone, PartialEq, Message)]
pub struct Wasm {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PluginConfig>,
}

/// `envoy.extensions.wasm.v3.PluginConfig`.
#[derive(Clone, PartialEq, Message)]
pub struct PluginConfig {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub root_id: String,
    #[prost(message, optional, tag = "3")]
    pub vm_config: Option<VmConfig>,
    #[prost(message, optional, tag = "4")]
    pub configuration: Option<Any>,
    #[prost(enumeration = "FailurePolicy", tag = "7")]
    pub failure_policy: i32,
    /// `google.protobuf.BoolValue`: the body reaches a filter holding the request headers.
    #[prost(message, optional, tag = "9")]
    pub allow_on_headers_stop_iteration: Option<BoolValue>,
}

/// `google.protobuf.BoolValue`.
#[derive(Clone, PartialEq, Message)]
pub struct BoolValue {
    #[prost(bool, tag = "1")]
    pub value: bool,
}

/// `envoy.extensions.wasm.v3.FailurePolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FailurePolicy {
    Unspecified = 0,
    FailReload = 1,
    FailClosed = 2,
    FailOpen = 3,
}

/// `envoy.extensions.wasm.v3.VmConfig`.
#[derive(Clone, PartialEq, Message)]
pub struct VmConfig {
    #[prost(string, tag = "1")]
    pub vm_id: String,
    #[prost(string, tag = "2")]
    pub runtime: String,
    #[prost(message, optional, tag = "3")]
    pub code: Option<AsyncDataSource>,
    #[prost(message, optional, tag = "7")]
    pub environment_variables: Option<EnvironmentVariables>,
}

/// `envoy.extensions.wasm.v3.EnvironmentVariables`.
#[derive(Clone, PartialEq, Message)]
pub struct EnvironmentVariables {
    #[prost(string, repeated, tag = "1")]
    pub host_env_keys: Vec<String>,
    #[prost(btree_map = "string, string", tag = "2")]
    pub key_values: std::collections::BTreeMap<String, String>,
}

/// `envoy.config.core.v3.AsyncDataSource` with its `local` case.
#[derive(Clone, PartialEq, Message)]
pub struct AsyncDataSource {
    #[prost(message, optional, tag = "1")]
    pub local: Option<DataSource>,
}

/// `envoy.config.core.v3.DataSource` with its `filename` case.
#[derive(Clone, PartialEq, Message)]
pub struct DataSource {
    #[prost(string, tag = "1")]
    pub filename: String,
}

/// `google.protobuf.StringValue`: how the module's configuration travels.
#[derive(Clone, PartialEq, Message)]
pub struct StringValue {
    #[prost(string, tag = "1")]
    pub value: String,
}

/// An `Any` as one `DiscoveryResponse.resources` entry (field 2), encoded: a snapshot's
/// resources are encoded once, and every stream sends the same bytes.
pub fn resource_entry(any: &Any) -> bytes::Bytes {
    let mut entry = Vec::with_capacity(any.encoded_len() + 8);
    prost::encoding::message::encode(2, any, &mut entry);
    entry.into()
}

/// A `DiscoveryResponse` as one gRPC message, in pieces: the message prefix with the small
/// fields, then the resource entries as they are (a message is its fields in any order).
pub fn response_message(version_info: &str, nonce: &str, resources: &[bytes::Bytes]) -> Vec<bytes::Bytes> {
    let head = DiscoveryResponse {
        version_info: version_info.to_string(),
        resources: Vec::new(),
        type_url: TYPED_EXTENSION_CONFIG.to_string(),
        nonce: nonce.to_string(),
    }
    .encode_to_vec();
    let length = head.len() + resources.iter().map(bytes::Bytes::len).sum::<usize>();
    let mut first = Vec::with_capacity(5 + head.len());
    first.push(0);
    first.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    first.extend_from_slice(&head);
    std::iter::once(first.into()).chain(resources.iter().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_in_pieces_is_the_response() {
        let resources = vec![
            Any { type_url: TYPED_EXTENSION_CONFIG.into(), value: b"jwt".to_vec() },
            Any { type_url: TYPED_EXTENSION_CONFIG.into(), value: b"ratelimit".to_vec() },
        ];
        let entries: Vec<bytes::Bytes> = resources.iter().map(resource_entry).collect();
        let wire: Vec<u8> = response_message("v1", "7", &entries).concat();
        assert_eq!(wire[0], 0);
        assert_eq!(u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize, wire.len() - 5);
        let read = DiscoveryResponse::decode(&wire[5..]).unwrap();
        let expected = DiscoveryResponse { version_info: "v1".into(), resources, type_url: TYPED_EXTENSION_CONFIG.into(), nonce: "7".into() };
        assert_eq!(read, expected);
    }
}
