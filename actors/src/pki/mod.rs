//! The cluster PKI (SPEC §6, §13): the CA, node certificates signed from CSRs, the API
//! server certificate, renewal timing ([`ca`]), and join/API tokens ([`tokens`]).
//!
//! These are the pure parts; the leader's `Pki` actor, `kat-agent join` and the API
//! server use them.

pub mod ca;
pub mod pin;
pub mod tokens;
