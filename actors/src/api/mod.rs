//! The leader's API on `apiPort` (SPEC §10), served by tonic over rustls.
//!
//! So far the node API's `Join` ([`node_api`]): a token-authenticated call that turns
//! a CSR into a node certificate and registers the node, all in one fenced
//! transaction. The other node-API calls, the user API and the Api actor that runs
//! the server in the leader subtree come next.

pub mod node_api;
