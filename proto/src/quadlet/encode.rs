//! Proto → text: proto3 JSON (the REST form) and YAML in the same shape as the
//! Quadlet files, so that `katcall get -o yaml` output reads like what was applied.

use serde::Serialize;

/// Proto3 JSON, pretty-printed.
pub fn to_json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(value)
}

/// YAML with the Quadlet field names (`clusterCIDR`, `minVRAM_MB`, enum names as text).
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(value)
}
