//! How `katcall` prints resources: tables for people, proto3 JSON / YAML for tools
//! (`{"items": [...]}` for lists, SPEC §11).

pub use kat_proto::quantity::parse_duration;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use kat_proto::v1alpha1::instance_status::Health;
use kat_proto::v1alpha1::{
    Event, Instance, InstancePhase, Node, NodeRole, NodeState, Quadlet, UpdateStrategyType,
    WorkloadSpec, WorkloadStatusResponse, WorkloadType, source,
};
use serde::Serialize;

use crate::OutputFormat;
use crate::remote::CmdResult;

/// JSON or YAML text of `value` (proto3 JSON field names).
pub fn encode<T: Serialize>(value: &T, format: OutputFormat) -> Result<String, String> {
    match format {
        OutputFormat::Yaml => serde_yaml_ng::to_string(value).map_err(|e| e.to_string()),
        _ => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
    }
}

/// Prints `value` as JSON or YAML (`-o json|yaml`).
pub fn emit<T: Serialize>(value: &T, format: OutputFormat) -> CmdResult {
    print!("{}", encode(value, format)?);
    Ok(())
}

/// "12s", "5m", "3h", "2d": how long ago `seconds` (Unix time) was, seen at `now`.
pub fn age(seconds: i64, now: SystemTime) -> String {
    let now = i64::try_from(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
        .unwrap_or(i64::MAX);
    let d = (now - seconds).max(0);
    match d {
        0..60 => format!("{d}s"),
        60..3600 => format!("{}m", d / 60),
        3600..86400 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86400),
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Ready => "Ready",
        NodeState::NotReady => "NotReady",
        NodeState::Detached => "Detached",
        NodeState::Draining => "Draining",
        NodeState::Cordoned => "Cordoned",
        NodeState::Unspecified => "Unknown",
    }
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::ControlPlane => "control-plane",
        NodeRole::Worker => "worker",
        NodeRole::Unspecified => "-",
    }
}

/// `text` safe to print on a terminal: every control character but newline and tab
/// (`keep_lines`; otherwise those too) shown as an escape (`\u{1b}`), so a name, label
/// or message a node or a container chose cannot move the cursor, recolour the screen
/// or retitle the window.
pub fn terminal_safe(text: &str, keep_lines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(keep_lines && matches!(c, '\n' | '\t')) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `katcall describe node`.
pub fn describe_node(node: &Node, events: &[Event], now: SystemTime) -> String {
    terminal_safe(&describe_node_text(node, events, now), true)
}

/// `katcall describe workload`.
pub fn describe_workload(s: &WorkloadStatusResponse, now: SystemTime) -> String {
    terminal_safe(&describe_workload_text(s, now), true)
}

/// One event as `katcall get events --watch` prints it.
pub fn event_line(e: &Event) -> String {
    terminal_safe(&event_line_text(e), false)
}

fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| terminal_safe(cell, false)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn node_row(node: &Node, now: SystemTime) -> Vec<String> {
    let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
    let spec = node.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let heartbeat = status.last_heartbeat.as_ref().map_or_else(
        || "never".to_owned(),
        |t| format!("{} ago", age(t.seconds, now)),
    );
    // Conditions that hold follow the state: `NotReady,Disrupted`,
    // `Ready,StoreOutOfSpace`.
    let mut state = state_name(status.state()).to_owned();
    for c in status.conditions.iter().filter(|c| c.status) {
        state.push(',');
        state.push_str(&c.r#type);
    }
    vec![
        name.to_owned(),
        state,
        role_name(spec.role()).to_owned(),
        spec.advertise_address.clone(),
        heartbeat,
        if spec.agent_version.is_empty() {
            "-".to_owned()
        } else {
            spec.agent_version.clone()
        },
    ]
}

/// `katcall get nodes` as a table.
pub fn nodes_table(nodes: &[Node], now: SystemTime) -> String {
    let mut rows = vec![
        [
            "NAME",
            "STATUS",
            "ROLE",
            "ADDRESS",
            "LAST HEARTBEAT",
            "VERSION",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    rows.extend(nodes.iter().map(|n| node_row(n, now)));
    table(&rows)
}

pub fn rfc3339(ts: &pbjson_types::Timestamp) -> String {
    serde_json::to_value(ts)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn bytes(n: i64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    #[allow(clippy::cast_precision_loss)]
    let gib = n as f64 / GIB;
    format!("{gib:.1} GiB")
}

/// `katcall describe node N`: spec, status and the node's recent events.
fn describe_node_text(node: &Node, events: &[Event], now: SystemTime) -> String {
    let meta = node.metadata.clone().unwrap_or_default();
    let spec = node.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<16}{v}", format!("{k}:"));
    };
    field("Name", meta.name.clone());
    field("Role", role_name(spec.role()).to_owned());
    field("Address", spec.advertise_address.clone());
    field("Status", state_name(status.state()).to_owned());
    field(
        "Last heartbeat",
        status.last_heartbeat.as_ref().map_or_else(
            || "never".to_owned(),
            |t| format!("{} ({} ago)", rfc3339(t), age(t.seconds, now)),
        ),
    );
    for c in status.conditions.iter().filter(|c| c.status) {
        field(
            "Condition",
            format!("{} ({}): {}", c.r#type, c.reason, c.message),
        );
    }
    field("Agent version", spec.agent_version.clone());
    if let Some(c) = &spec.capacity {
        field(
            "Capacity",
            format!("cpu {}m, memory {}", c.cpu_millis, bytes(c.memory_bytes)),
        );
        if !c.gpus.is_empty() {
            let gpus: Vec<String> = c
                .gpus
                .iter()
                .map(|g| format!("#{} {} ({} MiB)", g.index, g.model, g.vram_mb))
                .collect();
            field("GPUs", gpus.join(", "));
        }
    }
    field("Unschedulable", spec.unschedulable.to_string());
    let labels: Vec<String> = meta
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    field(
        "Labels",
        if labels.is_empty() {
            "<none>".to_owned()
        } else {
            labels.join(", ")
        },
    );
    if !spec.overlay_subnet.is_empty() {
        field("Overlay subnet", spec.overlay_subnet.clone());
    }
    events_section(&mut out, events, now);
    out
}

/// "Events:" and the events as an indented table.
fn events_section(out: &mut String, events: &[Event], now: SystemTime) {
    out.push_str("Events:\n");
    if events.is_empty() {
        out.push_str("  <none>\n");
        return;
    }
    for line in events_table(events, now).lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// `katcall get events` as a table.
pub fn events_table(events: &[Event], now: SystemTime) -> String {
    let mut rows = vec![
        ["AGE", "OBJECT", "REASON", "MESSAGE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for e in events {
        let object = event_object(e);
        rows.push(vec![
            e.time
                .as_ref()
                .map_or_else(String::new, |t| age(t.seconds, now)),
            object,
            e.reason.clone(),
            e.message.clone(),
        ]);
    }
    table(&rows)
}

/// `[########------------]`: `done` of `total` in `width` cells.
pub fn progress_bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        (done.min(total) as usize * width) / total as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// `kind/name` or `kind/namespace/name` of the event's object.
fn event_object(e: &Event) -> String {
    e.involved_object.as_ref().map_or_else(String::new, |o| {
        if o.namespace.is_empty() {
            format!("{}/{}", o.kind.to_ascii_lowercase(), o.name)
        } else {
            format!("{}/{}/{}", o.kind.to_ascii_lowercase(), o.namespace, o.name)
        }
    })
}

/// The columns of [`event_line`].
pub fn event_line_header() -> String {
    format!(
        "{:<20}  {:<32}  {:<18}  MESSAGE",
        "TIME", "OBJECT", "REASON"
    )
}

/// One event as a line of a stream (`get events --watch`): its time rather than an
/// age, which would go stale.
fn event_line_text(e: &Event) -> String {
    let object = event_object(e);
    let time = e.time.as_ref().map(rfc3339).unwrap_or_default();
    // Whole seconds are enough here.
    let time = match time.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => time,
    };
    format!("{time:<20}  {object:<32}  {:<18}  {}", e.reason, e.message)
}

fn image_of(spec: &WorkloadSpec) -> String {
    match spec.source.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(source::Kind::Image(i)) => i.clone(),
        Some(source::Kind::Git(g)) => format!("git {}", g.repository),
        None => String::new(),
    }
}

fn type_name(t: WorkloadType) -> &'static str {
    match t {
        WorkloadType::Job => "JOB",
        WorkloadType::DaemonService => "DAEMON_SERVICE",
        _ => "SERVICE",
    }
}

/// `katcall get workloads` as a table.
pub fn workloads_table(items: &[Quadlet], now: SystemTime) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "TYPE",
            "READY",
            "GENERATION",
            "IMAGE",
            "AGE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for q in items {
        let w = q.workload.clone().unwrap_or_default();
        let meta = w.metadata.clone().unwrap_or_default();
        let spec = w.spec.clone().unwrap_or_default();
        let status = w.status.clone().unwrap_or_default();
        rows.push(vec![
            meta.namespace.clone(),
            meta.name.clone(),
            type_name(spec.r#type()).to_owned(),
            format!("{}/{}", status.ready_instances, status.desired_instances),
            meta.generation.to_string(),
            image_of(&spec),
            meta.created_at
                .as_ref()
                .map_or_else(String::new, |t| age(t.seconds, now)),
        ]);
    }
    table(&rows)
}

/// `katcall backup --list` as a table.
pub fn backups_table(items: &[kat_proto::v1alpha1::Backup], now: SystemTime) -> String {
    let mut rows = vec![
        ["NAME", "SIZE", "REVISION", "AGE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for b in items {
        rows.push(vec![
            b.name.clone(),
            b.size_bytes.to_string(),
            b.revision.to_string(),
            b.created_at
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| age(t.seconds, now)),
        ]);
    }
    table(&rows)
}

/// `katcall get namespaces` as a table.
pub fn namespaces_table(items: &[kat_proto::v1alpha1::Namespace], now: SystemTime) -> String {
    let mut rows = vec![["NAME", "WORKLOADS", "AGE"].map(str::to_owned).to_vec()];
    for n in items {
        let meta = n.metadata.clone().unwrap_or_default();
        rows.push(vec![
            meta.name,
            n.status.as_ref().map_or(0, |s| s.workloads).to_string(),
            meta.created_at
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| age(t.seconds, now)),
        ]);
    }
    table(&rows)
}

fn phase_name(p: InstancePhase) -> String {
    let name = p.as_str_name();
    let mut out = String::new();
    for (i, part) in name.split('_').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first);
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    if p == InstancePhase::Unspecified {
        "Unknown".to_owned()
    } else {
        out
    }
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Healthy => "Healthy",
        Health::Unhealthy => "Unhealthy",
        Health::Starting => "Starting",
        _ => "-",
    }
}

/// `katcall get instances` as a table.
pub fn instances_table(items: &[Instance]) -> String {
    let mut rows = vec![
        [
            "ID", "WORKLOAD", "NODE", "PHASE", "HEALTH", "RESTARTS", "GEN", "MESSAGE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for i in items {
        let status = i.status.clone().unwrap_or_default();
        let message = if i.node_lost {
            "NodeLost: not counted; replaced elsewhere, retired when its node returns".to_owned()
        } else if status.reason.is_empty() {
            status.message.clone()
        } else if status.message.is_empty() {
            status.reason.clone()
        } else {
            format!("{}: {}", status.reason, status.message)
        };
        rows.push(vec![
            i.id.clone(),
            format!("{}/{}", i.namespace, i.workload),
            if i.node.is_empty() {
                "-".to_owned()
            } else {
                i.node.clone()
            },
            phase_name(status.phase()),
            health_name(status.health()).to_owned(),
            status.restarts.to_string(),
            i.generation.to_string(),
            message,
        ]);
    }
    table(&rows)
}

/// `katcall describe workload N`: spec, status, instances (with pending reasons) and
/// recent events.
fn describe_workload_text(s: &WorkloadStatusResponse, now: SystemTime) -> String {
    let w = s.workload.clone().unwrap_or_default();
    let meta = w.metadata.clone().unwrap_or_default();
    let spec = w.spec.clone().unwrap_or_default();
    let status = w.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<16}{v}", format!("{k}:"));
    };
    field("Name", meta.name.clone());
    field("Namespace", meta.namespace.clone());
    field("Type", type_name(spec.r#type()).to_owned());
    field("Image", image_of(&spec));
    field("Generation", meta.generation.to_string());
    if spec.r#type() == WorkloadType::Service {
        field("Replicas", spec.replicas.unwrap_or(1).to_string());
    }
    if let Some(u) = &spec.update_strategy {
        let kind = if u.r#type() == UpdateStrategyType::Simultaneous {
            "SIMULTANEOUS".to_owned()
        } else {
            format!(
                "ROLLING (maxSurge {})",
                if u.max_surge.is_empty() {
                    "1"
                } else {
                    &u.max_surge
                }
            )
        };
        field("Update", kind);
    }
    field(
        "Ready",
        format!(
            "{}/{} ({} pending)",
            status.ready_instances, status.desired_instances, status.pending_instances
        ),
    );
    if spec.r#type() == WorkloadType::Job {
        field("State", status.job_state.clone());
        field(
            "Runs",
            format!(
                "{} succeeded, {} failed, {} active",
                status.succeeded, status.failed, status.active
            ),
        );
    }
    field(
        "Created",
        meta.created_at.as_ref().map_or_else(String::new, |t| {
            format!("{} ({} ago)", rfc3339(t), age(t.seconds, now))
        }),
    );
    out.push_str("Instances:\n");
    if s.instances.is_empty() {
        out.push_str("  <none>\n");
    } else {
        for line in instances_table(&s.instances).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    events_section(&mut out, &s.recent_events, now);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn streamed_events_show_their_time_in_whole_seconds() {
        let e = Event {
            time: Some(pbjson_types::Timestamp {
                seconds: 1_796_083_200,
                nanos: 500_000_000,
            }),
            reason: "Scheduled".into(),
            message: "placed a1 on n1".into(),
            involved_object: Some(kat_proto::v1alpha1::ObjectReference {
                kind: "Workload".into(),
                namespace: "default".into(),
                name: "web".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = event_line(&e);
        assert!(
            line.starts_with("2026-12-01T00:00:00Z  workload/default/web "),
            "{line}"
        );
        assert!(
            line.ends_with("  Scheduled           placed a1 on n1"),
            "{line}"
        );
        assert!(event_line_header().starts_with("TIME  "));
    }

    #[test]
    fn progress_bars_fill_in_proportion() {
        assert_eq!(progress_bar(0, 3, 6), "[------]");
        assert_eq!(progress_bar(2, 3, 6), "[####--]");
        assert_eq!(progress_bar(3, 3, 6), "[######]");
        assert_eq!(progress_bar(5, 3, 6), "[######]", "never past full");
        assert_eq!(progress_bar(0, 0, 4), "[####]", "nothing to do is done");
    }

    #[test]
    fn ages_are_short() {
        let now = UNIX_EPOCH + Duration::from_secs(100_000);
        assert_eq!(age(99_990, now), "10s");
        assert_eq!(age(99_000, now), "16m");
        assert_eq!(age(10_000, now), "1d");
        assert_eq!(age(200_000, now), "0s");
    }

    #[test]
    fn node_table_has_a_row_per_node() {
        let node = Node {
            metadata: Some(kat_proto::v1alpha1::ObjectMeta {
                name: "n1".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = nodes_table(&[node], UNIX_EPOCH);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("n1 "));
        assert!(lines[1].contains("Unknown"));
        assert!(lines[1].contains("never"));
    }

    #[test]
    fn what_nodes_and_containers_chose_cannot_drive_the_terminal() {
        let node = Node {
            metadata: Some(kat_proto::v1alpha1::ObjectMeta {
                name: "n1\u{1b}]0;pwned\u{7}".to_owned(),
                labels: [("zone".to_owned(), "\u{1b}[2Jred".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let event = Event {
            message: "line one\nline two \u{1b}[31m".to_owned(),
            ..Default::default()
        };
        for text in [
            nodes_table(std::slice::from_ref(&node), UNIX_EPOCH),
            describe_node(&node, std::slice::from_ref(&event), UNIX_EPOCH),
            event_line(&event),
        ] {
            assert!(
                !text.contains('\u{1b}') && !text.contains('\u{7}'),
                "{text:?}"
            );
            assert!(text.contains("\\u{1b}"), "shown, escaped: {text:?}");
        }
        assert!(!event_line(&event).contains('\n'), "one event, one line");
    }
}
