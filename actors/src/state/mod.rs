//! Cluster state (SPEC §5): what KAT keeps in etcd, as typed reads and fenced writes.
//!
//! Every etcd key is in [`keys`]; events in [`events`]; the objects in one module
//! each ([`cluster`], [`nodes`], [`namespaces`], [`workloads`], [`instances`],
//! [`tokens`]). Reads take any `&dyn StateStore`; writes take the leader's
//! [`Leadership`] and carry its election fence, with the change's event in the same
//! transaction. Everything fails with the one [`StateError`], which the API edge turns
//! into a gRPC status and the simulation into a link error.
//!
//! The leader's actors and the API adapters both build on this module; it builds only
//! on [`crate::store`] (and the pure [`crate::pki`]).

pub mod cluster;
mod error;
pub mod events;
pub mod instances;
pub mod keys;
mod leadership;
pub mod liveness;
pub mod namespaces;
pub mod nodes;
mod store_health;
pub mod tokens;
pub mod workloads;

pub use error::{StateError, StateResult};
pub use events::{EventLease, EventRecord};
pub use leadership::Leadership;
pub use liveness::Liveness;
pub use store_health::StoreHealth;
