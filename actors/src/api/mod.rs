//! The API's adapters (SPEC §2, §10): the node API ([`node`]) and the user API
//! ([`user`]) as gRPC, the same user API as REST with its OpenAPI document ([`rest`]),
//! all served on `apiPort` by [`server`]; the node API in process for simulations
//! ([`in_process`]). Each call is a few lines over `crate::state` and the leader's
//! behaviours (`crate::leader`); a [`crate::state::StateError`] becomes a gRPC status
//! in one place ([`status`]).

mod gate;
pub mod in_process;
pub mod node;
pub mod rest;
pub mod served;
pub mod server;
mod status;
pub mod user;

pub use served::Served;
pub use server::serve;
