//! The container runtime (SPEC §8): the `ContainerRuntime` trait, the Podman backend
//! with instances as systemd units managed over D-Bus, and the in-memory fake runtime
//! used by simulations.
//!
//! Empty for now: the runtime arrives with its own issue. Depends on `kat-proto` only.
