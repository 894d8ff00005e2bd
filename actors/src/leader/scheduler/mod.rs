//! The scheduler (SPEC §7): [`place`] is the pure placement function; the actor
//! feeds it snapshots and writes the results.

pub mod place;
