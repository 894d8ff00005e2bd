//! The cluster PKI (SPEC §6, §13): the CAs, node and etcd certificates signed from
//! CSRs, the API server certificate, renewal timing ([`ca`]); what a node keeps in
//! `DIR/pki` ([`local`]); the CA pin of joins ([`pin`]); join and API tokens
//! ([`tokens`]). Pure functions and files: the leader, `kat-agent init` and `join`, the
//! API servers and NodeCerts use them.

pub mod ca;
pub mod local;
pub mod pin;
pub mod tokens;
