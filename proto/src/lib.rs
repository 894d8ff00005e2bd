//! KAT's resource model (SPEC §4, §10).
//!
//! - [`v1alpha1`]: the protobuf messages and gRPC services generated from `proto/kat/`,
//!   with proto3 JSON (pbjson) for the REST side.
//! - [`quadlet`]: `.kat` YAML files parsed into those types, every default applied and
//!   every rule checked, all errors reported at once with file and field path.
//! - [`bundle`]: Quadlet directories packed as tar.gz, and unpacked safely.
//! - [`quantity`], [`cron`], [`names`]: the small grammars the rules use.

pub mod bundle;
pub mod cron;
pub mod limits;
pub mod names;
pub mod quadlet;
pub mod quantity;

/// Generated from `proto/kat/v1alpha1/*.proto`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod v1alpha1 {
    include!(concat!(env!("OUT_DIR"), "/kat.v1alpha1.rs"));
    include!(concat!(env!("OUT_DIR"), "/kat.v1alpha1.serde.rs"));
}

/// The compiled `.proto` files as a `google.protobuf.FileDescriptorSet` (the OpenAPI
/// document's schemas are made from it).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kat_descriptor.bin"));

/// A wall-clock time as the proto `Timestamp` every resource uses (whole seconds and
/// nanoseconds since the Unix epoch; times before it read as the epoch).
pub fn timestamp(t: std::time::SystemTime) -> pbjson_types::Timestamp {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// The crate's version, reported by `katcall version` and `kat-agent version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
