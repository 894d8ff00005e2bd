//! One systemd service unit per instance (SPEC §8.2), rendered here: `podman run
//! --rm --replace --sdnotify=conmon -d …` with cleanup on stop, and the instance's
//! restart policy as systemd's `Restart=` and start limits. Pure functions.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::podman::args::container_args;
use crate::types::{ContainerCreateOptions, RestartPolicy};

/// How conmon and the container are placed in cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupsMode {
    /// conmon in the unit's cgroup, the container in a sub-cgroup (needs a systemd
    /// manager with a cgroup of its own).
    Split,
    /// conmon stays in the unit's cgroup, the container under Podman's parent cgroup:
    /// works everywhere (the test machines' user managers included).
    #[default]
    NoConmon,
}

/// `kat-<ns>-<workload>-<id>.service`.
pub fn unit_name(namespace: &str, workload: &str, instance_id: &str) -> String {
    format!("kat-{namespace}-{workload}-{instance_id}.service")
}

/// One argument quoted for a systemd `Exec*=` line: in double quotes, with `\` and
/// `"` escaped, `%` and `$` doubled so systemd expands nothing, and every control
/// character written as an escape, so no argument can end the line (validation refuses
/// most of them before they get here).
pub fn quote(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a unit setting's value (which is not quoted): `%` doubled; `None` for a
/// path with white space or control characters (the agent's own directories and
/// validated names never have them).
fn path_setting(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some(text.replace('%', "%%"))
}

fn exec_line(program: &Path, args: &[String]) -> String {
    let mut line = quote(&program.display().to_string());
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line
}

/// The env file of unit `unit_name`: beside it, `<unit>.env`.
pub fn env_file_name(unit_name: &str) -> String {
    format!("{}.env", unit_name.trim_end_matches(".service"))
}

/// The file beside unit `unit_name` that keeps Podman's standard error.
pub fn err_file_name(unit_name: &str) -> String {
    format!("{}.err", unit_name.trim_end_matches(".service"))
}

/// The text of an instance's env file, as `podman run --env-file` reads it: one
/// `NAME=value` a line (validation keeps newlines out of values).
pub fn env_file_text(env: &std::collections::BTreeMap<String, String>) -> String {
    env.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// The unit file for one instance; `env_file` is where its environment is (when it
/// has one).
pub fn render_unit(
    opts: &ContainerCreateOptions,
    podman: &Path,
    cgroups: CgroupsMode,
    stop_timeout: Duration,
    env_file: Option<&Path>,
    err_file: Option<&Path>,
) -> String {
    let mut opts = opts.clone();
    opts.systemd_mode = true;
    // Run-once (NEVER, e.g. a JOB's runs): the container is kept after it ends, so
    // its exit code can be read (the runtime removes it when the instance is
    // retired), and the unit does not time out waiting: a container that exits at
    // once may end before conmon says READY. (`podman run` attached, or `podman
    // wait`, hang for rootless containers on some hosts, so neither is used.)
    let run_once = opts.restart == RestartPolicy::Never;
    let mut run: Vec<String> = vec!["run".into()];
    if !run_once {
        run.push("--rm".into());
    }
    run.extend([
        "--replace".into(),
        "--sdnotify=conmon".into(),
        match cgroups {
            CgroupsMode::Split => "--cgroups=split".into(),
            CgroupsMode::NoConmon => "--cgroups=no-conmon".into(),
        },
        "--detach".into(),
    ]);
    // The environment's values stay out of the unit (whose text systemd shows any
    // local user over D-Bus) and out of Podman's own environment (names like
    // LD_PRELOAD would reach root's Podman): Podman reads them from a 0600 file
    // ([`env_file_text`], written beside the unit) and gives them to the container.
    let env = std::mem::take(&mut opts.env);
    if let Some(file) = env_file.filter(|_| !env.is_empty()) {
        run.push(format!("--env-file={}", file.display()));
    }
    run.extend(container_args(&opts));
    // A changed environment must change the unit (the runtime compares unit texts):
    // a digest of the file, not the values.
    let environment = if env.is_empty() {
        String::new()
    } else {
        let digest = crate::users::fnv1a(&env_file_text(&env));
        format!("# environment file digest {digest:016x}\n")
    };
    let name = opts.name.clone();
    let secs = stop_timeout.as_secs();
    let stop: Vec<String> = vec![
        "stop".into(),
        "--ignore".into(),
        format!("--time={secs}"),
        name.clone(),
    ];
    let cleanup: Vec<String> = vec![
        "rm".into(),
        "--force".into(),
        "--ignore".into(),
        "--time=0".into(),
        name.clone(),
    ];
    let (restart, limits) = match opts.restart {
        // Always means always: no start limit (systemd's default gives up after 5
        // starts in 10 s). A restart waits RestartSec, 1 s. (systemd 254's
        // RestartSteps would back off, but never resets after a good run: an
        // instance that crashes once a day would soon wait minutes every time.)
        RestartPolicy::Always => ("always", "StartLimitIntervalSec=0\n".to_owned()),
        RestartPolicy::Never => ("no", String::new()),
        // The first start counts against the burst: max_restarts restarts need one more.
        RestartPolicy::MaxCount {
            max_restarts,
            reset_seconds,
        } => (
            "on-failure",
            format!(
                "StartLimitIntervalSec={}\nStartLimitBurst={}\n",
                reset_seconds.max(1),
                max_restarts.saturating_add(1)
            ),
        ),
    };
    let mut unit = String::new();
    let _ = write!(
        unit,
        "# Written by kat-agent for instance {ns}/{wl}/{id}; do not edit.\n\
         [Unit]\n\
         Description=KAT instance {ns}/{wl}/{id}\n\
         {limits}\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=all\n\
         Environment=PODMAN_SYSTEMD_UNIT=%n\n\
         {environment}\
         ExecStart={start}\n\
         {stderr}\
         ExecStop={stop}\n\
         {cleanup}\
         Restart={restart}\n\
         RestartSec=1\n\
         TimeoutStartSec={start_timeout}\n\
         TimeoutStopSec={timeout}\n\
         KillMode=mixed\n",
        ns = opts.namespace,
        wl = opts.workload,
        id = opts.instance_id,
        start = exec_line(podman, &run),
        // Podman's own complaints (a start that fails before the container runs:
        // a network, a mount, a runtime error) are kept where the runtime reads the
        // last one to say why (`Units::start_error`); the container's output goes to
        // its log, not here.
        stderr = err_file
            .and_then(path_setting)
            .map_or_else(String::new, |f| format!("StandardError=append:{f}\n")),
        stop = exec_line(podman, &stop),
        cleanup = if run_once {
            String::new()
        } else {
            format!("ExecStopPost={}\n", exec_line(podman, &cleanup))
        },
        start_timeout = if run_once { "infinity" } else { "300" },
        timeout = secs + 10,
    );
    unit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ContainerCreateOptions {
        ContainerCreateOptions {
            instance_id: "a1b2".into(),
            namespace: "default".into(),
            workload: "web".into(),
            name: "kat-default-web-a1b2".into(),
            image: "localhost/busybox:latest".into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec!["echo \"$HOME\" 100% \\o/".into()],
            ..Default::default()
        }
    }

    #[test]
    fn names_and_quoting() {
        assert_eq!(
            unit_name("default", "web", "a1b2"),
            "kat-default-web-a1b2.service"
        );
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a \"b\" $c 5% \\"), r#""a \"b\" $$c 5%% \\""#);
        // No control character reaches the unit text raw: a carriage return or NUL
        // cannot end the line and start a directive of its own.
        let evil = "x\r\nExecStartPre=/bin/sh -c 'chmod 777 /'\u{0}\u{1b}";
        let quoted = quote(evil);
        assert!(!quoted.chars().any(|c| c.is_control()), "{quoted:?}");
        assert!(quoted.contains("\\x0d\\nExecStartPre") && quoted.contains("\\x00\\x1b"));
    }

    #[test]
    fn the_unit_runs_podman_under_systemd_with_cleanup() {
        let unit = render_unit(
            &opts(),
            Path::new("/usr/bin/podman"),
            CgroupsMode::NoConmon,
            Duration::from_secs(10),
            None,
            None,
        );
        let line = |key: &str| {
            unit.lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("no {key} in\n{unit}"))
                .to_owned()
        };
        let start = line("ExecStart=");
        for part in [
            r#""/usr/bin/podman" "run" "--rm" "--replace" "--sdnotify=conmon" "--cgroups=no-conmon" "--detach""#,
            r#""--label" "kat.dws.rip/instance-id=a1b2""#,
            r#""localhost/busybox:latest" "echo \"$$HOME\" 100%% \\o/""#,
        ] {
            assert!(start.contains(part), "{part} not in {start}");
        }
        assert!(!start.contains("--restart"), "systemd restarts, not podman");
        assert_eq!(
            line("ExecStop="),
            r#"ExecStop="/usr/bin/podman" "stop" "--ignore" "--time=10" "kat-default-web-a1b2""#
        );
        assert!(line("ExecStopPost=").contains(r#""rm" "--force" "--ignore""#));
        assert_eq!(line("Type="), "Type=notify");
        assert_eq!(line("KillMode="), "KillMode=mixed");
        assert_eq!(line("Restart="), "Restart=always");
        assert!(!unit.contains("StartLimitBurst"));
        // Always never gives up.
        assert!(unit.contains("\nStartLimitIntervalSec=0\n"));
        assert!(unit.find("StartLimitIntervalSec").unwrap() < unit.find("[Service]").unwrap());
    }

    #[test]
    fn restart_policies_map_to_systemd() {
        let mut o = opts();
        o.restart = RestartPolicy::Never;
        let unit = render_unit(
            &o,
            Path::new("/p"),
            CgroupsMode::Split,
            Duration::from_secs(5),
            None,
            None,
        );
        assert!(unit.contains("\nRestart=no\n"));
        assert!(unit.contains("--cgroups=split"));
        // Run once: the container stays for its exit code; no start timeout.
        assert!(!unit.contains("\"--rm\""));
        assert!(!unit.contains("ExecStopPost="));
        assert!(unit.contains("\nTimeoutStartSec=infinity\n"));
        o.restart = RestartPolicy::MaxCount {
            max_restarts: 3,
            reset_seconds: 600,
        };
        let unit = render_unit(
            &o,
            Path::new("/p"),
            CgroupsMode::Split,
            Duration::from_secs(5),
            None,
            None,
        );
        assert!(unit.contains("\nRestart=on-failure\n"));
        assert!(unit.contains("\nStartLimitIntervalSec=600\nStartLimitBurst=4\n"));
        // The limits belong to [Unit], before [Service].
        assert!(unit.find("StartLimitBurst").unwrap() < unit.find("[Service]").unwrap());
    }
}
