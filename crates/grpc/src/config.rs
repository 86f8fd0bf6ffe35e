//! The gRPC policy's configuration: the service's descriptor set and the methods it offers,
//! parsed strictly and compiled once against the descriptors.
//!
//! ```json
//! {"descriptor_set": "<base64 FileDescriptorSet>",
//!  "services": {"demo.orders.Orders": {"methods": {
//!     "GetOrder": {"scopes": ["orders:read"], "owner": [{"field": "tenant_id", "claim": "tenant"}]},
//!     "Settle": {"workloads": ["spiffe://cluster.local/ns/billing/sa/billing"], "require_user": false}}}},
//!  "field_rules": "enforce"}
//! ```
//!
//! The descriptor set's protovalidate annotations are the messages' field rules ([`crate::rules`]).

use std::collections::BTreeMap;

use ct_codecs::{Base64, Decoder};
use meshward_core::config::{body_limit, parse_json, ConfigError};
use meshward_core::caller::Requirement;
use meshward_core::workload::SpiffeIds;
use meshward_core::Mode;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde::Deserialize;

use crate::rules::{FieldRules, FieldRulesMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    /// A `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out`, `buf build -o`),
    /// standard base64.
    descriptor_set: String,
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    unknown_fields: UnknownFields,
    max_message_bytes: Option<usize>,
    #[serde(default)]
    field_rules: FieldRulesMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    methods: BTreeMap<String, RawMethod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMethod {
    #[serde(default)]
    public: bool,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    workloads: Vec<String>,
    #[serde(default = "yes")]
    require_user: bool,
    #[serde(default)]
    owner: Vec<RawOwner>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    /// A field of the request message, dotted through nested messages (`order.tenant_id`).
    field: String,
    claim: String,
}

/// Fields a message's type does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// Refused (`unknown_field`): the service would drop them silently, a check could not see them.
    #[default]
    Deny,
    Allow,
}

/// "The request's `field` must equal the principal's `claim`".
#[derive(Debug, Clone)]
pub struct OwnerField {
    /// The field, and the fields of the messages leading to it.
    pub path: Vec<FieldDescriptor>,
    pub name: String,
    pub claim: String,
}

/// One offered method, compiled.
#[derive(Debug, Clone)]
pub struct Method {
    /// `/package.Service/Method`, as the call's `:path`.
    pub path: String,
    /// Its rule name in metrics and logs: `package_Service-Method` (a label's alphabet has no dots).
    pub name: String,
    pub input: MessageDescriptor,
    /// Client-streaming or bidirectional: its messages are checked one by one as they arrive.
    pub client_streaming: bool,
    pub public: bool,
    /// The calling workload, the user and their scopes.
    pub access: Requirement,
    pub owner: Vec<OwnerField>,
}

#[derive(Debug, Clone)]
pub struct GrpcConfig {
    pub mode: Mode,
    pub methods: Vec<Method>,
    pub unknown_fields: UnknownFields,
    pub max_message_bytes: usize,
    /// The protovalidate rules of the messages the methods take.
    pub rules: FieldRules,
}

impl GrpcConfig {
    pub fn parse(json: &[u8]) -> Result<GrpcConfig, ConfigError> {
        let raw: RawConfig = parse_json(json)?;
        let bytes = Base64::decode_to_vec(raw.descriptor_set.trim(), None)
            .map_err(|_| ConfigError::new("descriptor_set", "is not standard base64 (of a FileDescriptorSet)"))?;
        let pool = DescriptorPool::decode(bytes.as_slice())
            .map_err(|e| ConfigError::new("descriptor_set", format!("is not a complete FileDescriptorSet (build it with --include_imports): {e}")))?;
        let max_message_bytes = body_limit("max_message_bytes", raw.max_message_bytes)?;
        if raw.services.is_empty() {
            return Err(ConfigError::new("services", "name at least one service"));
        }
        let mut methods = Vec::new();
        for (service_name, service) in raw.services {
            let at_service = format!("services.{service_name}");
            let descriptor = pool
                .get_service_by_name(&service_name)
                .ok_or_else(|| ConfigError::new(&at_service, "is not a service of the descriptor set (use its full name, package included)"))?;
            if service.methods.is_empty() {
                return Err(ConfigError::new(format!("{at_service}.methods"), "name at least one method"));
            }
            for (method_name, m) in service.methods {
                let at = |field: &str| format!("{at_service}.methods.{method_name}{field}");
                let method = descriptor
                    .methods()
                    .find(|d| d.name() == method_name)
                    .ok_or_else(|| ConfigError::new(at(""), format!("is not a method of {service_name}")))?;
                let workloads = SpiffeIds::new(m.workloads).map_err(|e| ConfigError::new(at(".workloads"), e))?;
                if m.public && (!m.scopes.is_empty() || !m.owner.is_empty() || !workloads.is_empty()) {
                    return Err(ConfigError::new(at(".public"), "a public method cannot also require scopes, owners or workloads"));
                }
                if !m.require_user && (workloads.is_empty() || !m.scopes.is_empty() || !m.owner.is_empty()) {
                    return Err(ConfigError::new(
                        at(".require_user"),
                        "a method without a user needs `workloads` (scopes and owners are read from the user's token)",
                    ));
                }
                let input = method.input();
                let owner = m
                    .owner
                    .into_iter()
                    .enumerate()
                    .map(|(i, o)| {
                        let path = field_path(&input, &o.field).map_err(|e| ConfigError::new(at(&format!(".owner[{i}].field")), e))?;
                        if o.claim.is_empty() {
                            return Err(ConfigError::new(at(&format!(".owner[{i}].claim")), "is empty"));
                        }
                        Ok(OwnerField { path, name: o.field, claim: o.claim })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                methods.push(Method {
                    path: format!("/{service_name}/{method_name}"),
                    name: format!("{}-{method_name}", service_name.replace('.', "_")),
                    input,
                    client_streaming: method.is_client_streaming(),
                    public: m.public,
                    access: Requirement { workloads, require_user: m.require_user, scopes: m.scopes },
                    owner,
                });
            }
        }
        let inputs: Vec<MessageDescriptor> = methods.iter().map(|m| m.input.clone()).collect();
        let rules = FieldRules::compile(&pool, &inputs, raw.field_rules).map_err(|e| ConfigError::new("field_rules", e))?;
        Ok(GrpcConfig { mode: raw.mode, methods, unknown_fields: raw.unknown_fields, max_message_bytes, rules })
    }
}

/// The fields a dotted name walks through; the last one a single string or integer.
fn field_path(message: &MessageDescriptor, dotted: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut path = Vec::new();
    let mut current = message.clone();
    let names: Vec<&str> = dotted.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let field = current.get_field_by_name(name).ok_or_else(|| format!("{dotted:?}: {} has no field {name:?}", current.full_name()))?;
        if field.is_list() || field.is_map() {
            return Err(format!("{dotted:?}: {name} is repeated; compare a single field"));
        }
        let last = i + 1 == names.len();
        match (field.kind(), last) {
            (Kind::Message(next), false) => current = next,
            (Kind::String | Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Sint32 | Kind::Sint64, true) => {}
            (_, true) => return Err(format!("{dotted:?}: {name} is not a string or integer field")),
            (_, false) => return Err(format!("{dotted:?}: {name} is not a message")),
        }
        path.push(field);
    }
    Ok(path)
}
