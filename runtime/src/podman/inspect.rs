//! Podman's JSON (`container inspect`, `ps --format json`) read into the runtime's
//! types. Read leniently by field name, so fields Podman adds or drops between
//! versions do not matter; tested against outputs recorded from Podman 4.3.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde_json::Value;

use crate::types::{ContainerState, ContainerStatus, ContainerSummary, Health};

fn state_of(status: &str) -> ContainerState {
    match status.to_ascii_lowercase().as_str() {
        "created" | "configured" | "initialized" => ContainerState::Created,
        "running" | "stopping" => ContainerState::Running,
        "paused" => ContainerState::Paused,
        "exited" | "stopped" => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

fn health_of(status: &str) -> Health {
    match status.to_ascii_lowercase().as_str() {
        "healthy" => Health::Healthy,
        "unhealthy" => Health::Unhealthy,
        "starting" => Health::Starting,
        _ => Health::None,
    }
}

/// An RFC 3339 time; Podman writes year 1 for "never".
fn time_of(v: &Value) -> Option<SystemTime> {
    let text = v.as_str()?;
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    (t.year() > 1).then(|| SystemTime::from(t))
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// The container's address: the default network's, else the first network's.
fn ip_of(settings: &Value) -> Option<IpAddr> {
    let direct = settings["IPAddress"].as_str().and_then(|s| s.parse().ok());
    direct.or_else(|| {
        settings["Networks"]
            .as_object()?
            .values()
            .find_map(|n| n["IPAddress"].as_str().and_then(|s| s.parse().ok()))
    })
}

/// One container from `podman container inspect --format=json` (an array of one).
pub fn parse_inspect(json: &[u8]) -> Result<ContainerStatus, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let c = match &v {
        Value::Array(items) => items.first().ok_or("empty inspect output")?,
        other => other,
    };
    let state = &c["State"];
    let status = state_of(state["Status"].as_str().unwrap_or_default());
    let exit_code = (status == ContainerState::Exited)
        .then(|| state["ExitCode"].as_i64())
        .flatten()
        .and_then(|c| i32::try_from(c).ok());
    let pid = state["Pid"]
        .as_u64()
        .filter(|p| *p > 0)
        .and_then(|p| u32::try_from(p).ok());
    Ok(ContainerStatus {
        id: str_of(&c["Id"]),
        name: str_of(&c["Name"]).trim_start_matches('/').to_owned(),
        state: status,
        exit_code,
        started_at: time_of(&state["StartedAt"]),
        finished_at: time_of(&state["FinishedAt"]),
        health: health_of(
            state["Health"]["Status"]
                .as_str()
                .or_else(|| state["Healthcheck"]["Status"].as_str())
                .unwrap_or_default(),
        ),
        image: str_of(&c["ImageName"]),
        image_id: str_of(&c["Image"]),
        ip: ip_of(&c["NetworkSettings"]),
        labels: labels_of(&c["Config"]["Labels"]),
        pid,
    })
}

/// The containers in `podman ps --all --format=json`.
pub fn parse_ps(json: &[u8]) -> Result<Vec<ContainerSummary>, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let items = match v {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        _ => return Err("expected a JSON array".to_owned()),
    };
    Ok(items
        .iter()
        .map(|c| {
            let state = state_of(c["State"].as_str().unwrap_or_default());
            ContainerSummary {
                id: str_of(&c["Id"]),
                name: c["Names"]
                    .as_array()
                    .and_then(|n| n.first())
                    .map(str_of)
                    .unwrap_or_default(),
                state,
                exit_code: (state == ContainerState::Exited)
                    .then(|| c["ExitCode"].as_i64())
                    .flatten()
                    .and_then(|c| i32::try_from(c).ok()),
                image: str_of(&c["Image"]),
                labels: labels_of(&c["Labels"]),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_running_container() {
        let s = parse_inspect(&data("inspect-running.json")).unwrap();
        assert_eq!(s.state, ContainerState::Running);
        assert_eq!(s.name, "kat-rec");
        assert!(s.id.starts_with("8bed56da7b28"));
        assert_eq!(s.exit_code, None);
        assert!(s.started_at.is_some());
        assert_eq!(s.finished_at, None, "year 1 means never");
        assert_eq!(s.health, Health::None);
        assert_eq!(s.image, "localhost/busybox:latest");
        assert!(s.image_id.starts_with("2a9e81534bc9"));
        assert_eq!(s.labels["kat.dws.rip/instance-id"], "abc123");
        assert_eq!(s.labels["kat.dws.rip/namespace"], "default");
        assert_eq!(s.labels["kat.dws.rip/workload-name"], "web");
        assert!(s.pid.is_some());
        assert_eq!(s.ip, None, "--network none");
    }

    #[test]
    fn exited_and_created_containers() {
        let s = parse_inspect(&data("inspect-exited.json")).unwrap();
        assert_eq!(s.state, ContainerState::Exited);
        assert_eq!(s.exit_code, Some(0));
        assert!(s.finished_at.unwrap() > s.started_at.unwrap());
        assert_eq!(s.pid, None);
        let s = parse_inspect(&data("inspect-exit7.json")).unwrap();
        assert_eq!((s.state, s.exit_code), (ContainerState::Exited, Some(7)));
        let s = parse_inspect(&data("inspect-created.json")).unwrap();
        assert_eq!((s.state, s.exit_code), (ContainerState::Created, None));
        assert_eq!(s.started_at, None);
    }

    #[test]
    fn the_address_on_a_network() {
        let s = parse_inspect(&data("inspect-network.json")).unwrap();
        assert_eq!(s.ip, Some("10.123.4.7".parse().unwrap()));
    }

    #[test]
    fn a_listing() {
        let list = parse_ps(&data("ps.json")).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "kat-rec2");
        assert_eq!(list[0].state, ContainerState::Exited);
        assert_eq!(list[0].exit_code, Some(7));
        assert_eq!(list[0].labels["kat.dws.rip/instance-id"], "def456");
        assert!(parse_ps(b"[]").unwrap().is_empty());
        assert!(parse_ps(b"null").unwrap().is_empty());
        assert!(parse_ps(b"{").is_err());
    }

    #[test]
    fn health_and_states_map() {
        assert_eq!(health_of("healthy"), Health::Healthy);
        assert_eq!(health_of("unhealthy"), Health::Unhealthy);
        assert_eq!(health_of("starting"), Health::Starting);
        assert_eq!(health_of(""), Health::None);
        assert_eq!(state_of("paused"), ContainerState::Paused);
        assert_eq!(state_of("stopping"), ContainerState::Running);
        assert_eq!(state_of("removing"), ContainerState::Unknown);
        assert!(parse_inspect(b"[]").is_err());
    }
}
