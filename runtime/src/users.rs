//! Per-workload users for rootless mode (SPEC §8.2): `kat_wl_<namespace>_<workload>`,
//! shortened with a hash when it would pass the 32 characters Linux user names may
//! have. Pure functions; creating the users comes with the rootless runtime.

/// The longest user name `useradd` accepts.
pub const MAX_USER_NAME: usize = 32;

/// FNV-1a, 64 bits: a hash that is the same on every build and platform.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The comment (`passwd` GECOS field) of the user of workload `namespace/workload`:
/// whose it is, checked before the user is used or removed.
pub fn owner_comment(namespace: &str, workload: &str) -> String {
    format!("KAT workload {namespace}/{workload}")
}

/// The user a workload's instances run as. Distinct workloads get distinct names:
/// a shortened name ends in a hash of the full one.
pub fn workload_user(namespace: &str, workload: &str) -> String {
    let full = format!("kat_wl_{namespace}_{workload}");
    if full.len() <= MAX_USER_NAME {
        return full;
    }
    // 64 bits: two workloads sharing a name (and so a uid, and `--purge-volumes`
    // removing the other's user) should not happen by chance; the user's comment
    // ([`owner_comment`]) says whose it is, and is checked before it is used.
    let hash = format!("{:016x}", fnv1a(&full));
    // Names are DNS labels (ASCII), so byte positions are character positions.
    let keep = MAX_USER_NAME - hash.len() - 1;
    format!("{}_{hash}", &full[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_spelled_out() {
        assert_eq!(workload_user("default", "web"), "kat_wl_default_web");
    }

    #[test]
    fn long_names_are_shortened_to_32_with_a_64_bit_hash_and_stay_distinct() {
        let a = workload_user("production", "very-long-workload-name-one");
        let b = workload_user("production", "very-long-workload-name-two");
        assert_eq!(a.len(), MAX_USER_NAME);
        assert_eq!(b.len(), MAX_USER_NAME);
        assert!(a.starts_with("kat_wl_produ"), "{a}");
        // A 64-bit hash: 16 hex digits after the kept prefix.
        let hash = a.rsplit('_').next().unwrap();
        assert_eq!(hash.len(), 16, "{a}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(
            a,
            workload_user("production", "very-long-workload-name-one"),
            "stable"
        );
        // The longest DNS labels still fit.
        let max = workload_user(&"n".repeat(63), &"w".repeat(63));
        assert_eq!(max.len(), MAX_USER_NAME);
    }
}
