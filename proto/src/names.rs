//! Syntax rules for names KAT accepts: DNS labels and names, label keys and values,
//! environment variable names, image references, paths.

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters. `None` when valid.
pub fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name.len() > 63 {
        return Some(format!("{name:?} is longer than 63 characters"));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if ok_chars && ok_ends {
        None
    } else {
        Some(format!(
            "{name:?} is not a DNS label (lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ))
    }
}

/// Dot-separated DNS labels, at most 253 characters (cluster domain, ingress hosts).
pub fn dns_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name.len() > 253 {
        return Some(format!("{name:?} is longer than 253 characters"));
    }
    if name
        .split('.')
        .any(|label| dns_label_problem(label).is_some())
    {
        return Some(format!(
            "{name:?} is not a DNS name (dot-separated labels of lowercase letters, digits and '-')"
        ));
    }
    None
}

fn is_label_segment(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum)
        && bytes
            .iter()
            .all(|&b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
}

/// A label or selector key: `[prefix/]name`, with a DNS-name prefix.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && dns_name_problem(prefix).is_some()
    {
        return Some(format!("label key prefix {prefix:?} is not a DNS name"));
    }
    if is_label_segment(name) {
        None
    } else {
        Some(format!(
            "{key:?} is not a valid label key (at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit, optionally after a DNS-name prefix and '/')"
        ))
    }
}

/// A label value: empty, or like a label key's name part.
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() || is_label_segment(value) {
        None
    } else {
        Some(format!(
            "{value:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit)"
        ))
    }
}

/// A control character other than tab and newline (NUL, carriage return, escape...),
/// which has no business in a command, an argument or an environment value and could
/// end a line of the unit file an instance runs from.
pub fn control_character_problem(text: &str) -> Option<String> {
    let bad = text
        .chars()
        .find(|c| (c.is_control() && !matches!(c, '\t' | '\n')) || *c == '\u{7f}')?;
    Some(format!(
        "contains the control character U+{:04X}; only tab and newline are allowed",
        u32::from(bad)
    ))
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_name_problem(name: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        None
    } else {
        Some(format!(
            "{name:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
        ))
    }
}

/// A container image reference such as `docker.io/library/nginx:1.27` or
/// `localhost/busybox@sha256:...`. Checks the shape, not that the image exists.
pub fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if image.len() > 512 {
        return Some("is longer than 512 characters".to_owned());
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let ok = digest.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return Some(format!(
                "{image:?} has a malformed digest (expected e.g. @sha256:<hex>)"
            ));
        }
    }
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Some(format!("{image:?} has an invalid tag {tag:?}"));
        }
    }
    let mut parts = repo.split('/');
    let first = parts.next().unwrap_or_default();
    let first_is_registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    for (i, part) in repo.split('/').enumerate() {
        // Every component starts and ends with a letter or digit: a reference that
        // starts with '-' would reach Podman as an option.
        let edges_ok = part
            .bytes()
            .next()
            .zip(part.bytes().last())
            .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
        let ok = edges_ok
            && if i == 0 && first_is_registry {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
            } else {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            };
        if !ok {
            return Some(format!(
                "{image:?} is not an image reference (repository path components are lowercase \
                 letters, digits, '.', '_' and '-', starting and ending with a letter or digit)"
            ));
        }
    }
    None
}

/// An absolute path without `..` components.
pub fn absolute_path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some(format!("{path:?} must be an absolute path"));
    }
    if path.split('/').any(|c| c == "..") {
        return Some(format!("{path:?} must not contain '..'"));
    }
    if path.contains('\0') {
        return Some("must not contain NUL bytes".to_owned());
    }
    None
}

/// Host paths no `hostMount` may name, nor a directory above or below one: the
/// system, the host's credentials and devices, KAT's own state and container-engine
/// sockets. (A mount of `/var` would show `/var/lib/kat`; one of `/run` the engines'
/// sockets.)
pub const DENIED_HOST_PATHS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/proc",
    "/root",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/kat",
    "/var/lib/containers",
    "/var/lib/docker",
    "/var/run",
    "/var/spool",
    "/run/kat",
    "/run/containerd",
    "/run/containers",
    "/run/docker.sock",
    "/run/podman",
    "/run/systemd",
    "/run/user",
    "/run/dbus",
];

/// `path` without empty and `.` components (`/srv//a/./b/` → `/srv/a/b`).
pub fn normal_host_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Whether `a` is `b` or below it (both normal).
fn is_within(a: &str, b: &str) -> bool {
    a == b || b == "/" || a.strip_prefix(b).is_some_and(|rest| rest.starts_with('/'))
}

/// Why `path` may not be a `hostMount`: not absolute, `..`, or `denied` (or one of
/// [`DENIED_HOST_PATHS`]) is the path, above it or below it.
pub fn host_path_problem(path: &str, denied: &[&str]) -> Option<String> {
    if let Some(problem) = absolute_path_problem(path) {
        return Some(problem);
    }
    let normal = normal_host_path(path);
    DENIED_HOST_PATHS
        .iter()
        .chain(denied)
        .find(|d| {
            let d = normal_host_path(d);
            // Everything is below `/`: it denies only itself.
            (d != "/" && is_within(&normal, &d)) || is_within(&d, &normal)
        })
        .map(|d| {
            format!(
                "{path:?} is or holds {d}, which no workload may mount (system files, devices, \
                 credentials, KAT's state or a container engine); mount a directory of its own \
                 such as /srv/<name>"
            )
        })
}

/// Why `path` (absolute, checked by [`host_path_problem`]) may not be a `hostMount`
/// under the cluster's `hostMounts.allowedPaths`: it is none of `allowed` nor below one.
pub fn host_path_allowed_problem<S: AsRef<str>>(path: &str, allowed: &[S]) -> Option<String> {
    let normal = normal_host_path(path);
    if allowed
        .iter()
        .any(|a| is_within(&normal, &normal_host_path(a.as_ref())))
    {
        return None;
    }
    let list: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
    Some(if list.is_empty() {
        "this cluster allows no hostMount (hostMounts.allowedPaths is empty in cluster.kat); \
         use simpleClusterStorage"
            .to_owned()
    } else {
        format!(
            "{path:?} is outside this cluster's hostMounts.allowedPaths ({}); mount a \
             directory below one of them (the list is set in cluster.kat at init)",
            list.join(", ")
        )
    })
}

/// Why `prefix` cannot be in `hostMounts.allowedPaths`: not absolute, or it is or lies
/// below a denied path, so it would allow nothing. (A prefix that holds a denied path,
/// `/var` or even `/`, is accepted: the deny list still applies below it.)
pub fn allowed_prefix_problem(prefix: &str) -> Option<String> {
    if let Some(problem) = absolute_path_problem(prefix) {
        return Some(problem);
    }
    let normal = normal_host_path(prefix);
    DENIED_HOST_PATHS
        .iter()
        .map(|d| normal_host_path(d))
        .find(|d| d != "/" && is_within(&normal, d))
        .map(|d| {
            format!(
                "{prefix:?} lies in {d}, which no workload may mount, so it would allow \
                 nothing; allow a directory of its own such as /srv"
            )
        })
}

/// A relative path that stays inside its base (no leading '/', no `..`).
pub fn relative_path_problem(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return Some(format!("{path:?} must be a relative path"));
    }
    if path.split('/').any(|c| c == "..") {
        return Some(format!("{path:?} must not contain '..'"));
    }
    if path.contains('\0') {
        return Some("must not contain NUL bytes".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["web", "a", "web-1", "0abc", &"a".repeat(63)] {
            assert_eq!(dns_label_problem(ok), None, "{ok}");
        }
        for bad in ["", "Web", "-web", "web-", "we_b", "web.x", &"a".repeat(64)] {
            assert!(dns_label_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        assert_eq!(dns_name_problem("kat.cluster.local"), None);
        assert!(dns_name_problem("kat..local").is_some());
        assert!(dns_name_problem("kat.local.").is_some());
    }

    #[test]
    fn label_keys_and_values() {
        assert_eq!(label_key_problem("disktype"), None);
        assert_eq!(label_key_problem("kat.dws.rip/role"), None);
        assert!(label_key_problem("Bad Key").is_some());
        assert!(label_key_problem("UPPER.example/x").is_some());
        assert_eq!(label_value_problem(""), None);
        assert_eq!(label_value_problem("ssd"), None);
        assert!(label_value_problem("-ssd").is_some());
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name_problem("GREETING"), None);
        assert_eq!(env_name_problem("_x1"), None);
        assert!(env_name_problem("1X").is_some());
        assert!(env_name_problem("A-B").is_some());
        assert!(env_name_problem("").is_some());
    }

    #[test]
    fn image_references() {
        for ok in [
            "nginx",
            "docker.io/library/nginx:1.27",
            "localhost/busybox:latest",
            "registry.example.com:5000/team/web:v1.2.0",
            "kat.local/default/web:0123abc",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(image_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:bad tag",
            "a//b",
            "nginx@sha256:xyz",
            "has space",
        ] {
            assert!(image_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(absolute_path_problem("/var/data"), None);
        assert!(absolute_path_problem("var/data").is_some());
        assert!(absolute_path_problem("/var/../etc").is_some());
        assert_eq!(relative_path_problem("sub/dir"), None);
        assert!(relative_path_problem("/abs").is_some());
        assert!(relative_path_problem("../up").is_some());
    }

    #[test]
    fn host_mounts_stay_below_an_allowed_prefix() {
        let allowed = ["/srv", "/mnt/data/"];
        for ok in ["/srv", "/srv/web/logs", "//srv/./web", "/mnt/data/x"] {
            assert_eq!(host_path_allowed_problem(ok, &allowed), None, "{ok}");
        }
        for bad in ["/srvx", "/mnt", "/mnt/database", "/opt/app", "/tmp"] {
            let problem = host_path_allowed_problem(bad, &allowed).expect(bad);
            assert!(problem.contains("/srv, /mnt/data/"), "{problem}");
        }
        let none: [&str; 0] = [];
        assert!(
            host_path_allowed_problem("/srv", &none)
                .is_some_and(|p| p.contains("allows no hostMount"))
        );
        assert_eq!(host_path_allowed_problem("/anything", &["/"]), None);
        assert_eq!(allowed_prefix_problem("/srv"), None);
        assert_eq!(
            allowed_prefix_problem("/var"),
            None,
            "the deny list applies below"
        );
        assert_eq!(allowed_prefix_problem("/"), None);
        assert!(allowed_prefix_problem("/etc").is_some());
        assert!(allowed_prefix_problem("/var/lib/kat/volumes").is_some());
        assert!(allowed_prefix_problem("srv").is_some());
    }
}
