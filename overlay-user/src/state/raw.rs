//! The state file as TOML gives it: every field as written, nothing checked yet. Unknown keys are
//! rejected here, so a typo never passes as a default. Serialized back, one object at a time,
//! for the store (`objects`).

use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub cluster: Option<RawCluster>,
    pub gwbridge: Option<RawGwbridge>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<RawNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<RawNetwork>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<RawEndpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<RawService>,
}

#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub vxlan_port: Option<i64>,
    pub maglev_slots_per_backend: Option<i64>,
}

/// `[gwbridge]`: its presence gives every local container a docker_gwbridge interface.
#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGwbridge {
    pub name: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ifname: Option<String>,
    pub icc: Option<bool>,
    pub masquerade: Option<bool>,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub name: String,
    pub address: String,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub name: String,
    pub vni: i64,
    pub subnet: String,
    pub gateway: Option<String>,
    pub mtu: Option<i64>,
    pub ingress: Option<bool>,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: String,
    pub mac: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

/// Keywords (`endpoint_mode`, `scheduler`, `protocol`, `publish_mode`) stay strings here so that
/// validation, not serde, refuses a misspelling, naming the field and the allowed values.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: String,
    pub endpoint_mode: Option<String>,
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<RawVip>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<RawPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<RawBackend>,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub network: String,
    pub ip: String,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPort {
    pub protocol: String,
    pub target: i64,
    pub published: Option<i64>,
    pub publish_mode: Option<String>,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub endpoint: String,
    pub weight: Option<i64>,
}

/// Borrowed view of one or more parsed tables, in file order: validation reads this, so tables
/// cached by the incremental parser are never copied.
#[derive(Default)]
pub(super) struct RawRefs<'a> {
    pub cluster: Option<&'a RawCluster>,
    pub gwbridge: Option<&'a RawGwbridge>,
    pub nodes: Vec<&'a RawNode>,
    pub networks: Vec<&'a RawNetwork>,
    pub endpoints: Vec<&'a RawEndpoint>,
    pub services: Vec<&'a RawService>,
}

impl<'a> RawRefs<'a> {
    pub fn add(&mut self, r: &'a RawState) {
        if let Some(c) = &r.cluster {
            self.cluster = Some(c);
        }
        if let Some(g) = &r.gwbridge {
            self.gwbridge = Some(g);
        }
        self.nodes.extend(r.nodes.iter());
        self.networks.extend(r.networks.iter());
        self.endpoints.extend(r.endpoints.iter());
        self.services.extend(r.services.iter());
    }
}
