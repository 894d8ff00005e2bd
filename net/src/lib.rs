//! Networking (SPEC §9): the WireGuard overlay (`kat0`), the IPAM allocator for node
//! subnets and instance IPs, and the cluster DNS server (hickory-server).
//!
//! Empty for now: networking arrives with its own issue. Depends on `kat-proto` only.
