//! From what the leader assigns to what the Runtime actor runs: an [`Assignment`]
//! (the instance and the Quadlet of its generation) becomes a [`DesiredInstance`]
//! (container options, health probe, volumes to prepare). Pure; a bad assignment is
//! an error naming the field, and that instance is reported FAILED.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::host::{DesiredInstance, HealthProbe};
use crate::{ContainerCreateOptions, PortMapping, Protocol, ResourceSpec, RestartPolicy};
use kat_proto::v1alpha1::{
    Assignment, Protocol as SpecProtocol, Quadlet, RestartCondition, source,
};
use prost::Message;

/// What the node adds to every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecContext {
    /// `volumeBasePath` of the cluster configuration.
    pub volume_base: PathBuf,
    /// KAT's own directories on this node (its state directory, the backups), which
    /// no `hostMount` may name, hold or lie in, wherever the operator put them.
    pub protected_paths: Vec<PathBuf>,
    /// Podman network instances join (`None`: Podman's default).
    pub network: Option<String>,
}

/// Why an assignment cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn secs(s: u32, default: u64) -> Duration {
    Duration::from_secs(if s == 0 { default } else { u64::from(s) })
}

/// The container name (and unit name stem) of an instance.
pub fn container_name(ns: &str, workload: &str, id: &str) -> String {
    format!("kat-{ns}-{workload}-{id}")
}

/// The instance the runtime should run for `a`.
pub fn desired_instance(a: &Assignment, ctx: &SpecContext) -> Result<DesiredInstance, SpecError> {
    let instance = a
        .instance
        .as_ref()
        .ok_or_else(|| err("instance", "missing"))?;
    let quadlet = Quadlet::decode(a.quadlet.as_slice())
        .map_err(|e| err("quadlet", format!("unreadable: {e}")))?;
    let workload = quadlet
        .workload
        .as_ref()
        .ok_or_else(|| err("workload", "missing"))?;
    let spec = workload
        .spec
        .as_ref()
        .ok_or_else(|| err("workload.spec", "missing"))?;
    let image = match spec.source.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(source::Kind::Image(image)) => image.clone(),
        Some(source::Kind::Git(_)) => {
            return Err(err(
                "spec.source.git",
                "git sources need image builds, which this build of kat-agent does not do yet",
            ));
        }
        None => return Err(err("spec.source", "no image")),
    };
    let container = spec.container.clone().unwrap_or_default();
    let (ns, name, id) = (&instance.namespace, &instance.workload, &instance.id);
    let restart = match spec.restart_policy.as_ref() {
        // A JOB's runs end; the scheduler starts new ones (with backoff).
        _ if spec.r#type() == kat_proto::v1alpha1::WorkloadType::Job => RestartPolicy::Never,
        None => RestartPolicy::Always,
        Some(p) => match p.condition() {
            RestartCondition::Never => RestartPolicy::Never,
            RestartCondition::MaxCount => RestartPolicy::MaxCount {
                max_restarts: p.max_restarts,
                reset_seconds: p.reset_seconds,
            },
            RestartCondition::Always | RestartCondition::Unspecified => RestartPolicy::Always,
        },
    };
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let resources = ResourceSpec {
        cpu_millis: if limits.cpu.is_empty() {
            None
        } else {
            Some(
                kat_proto::quantity::parse_cpu_millis(&limits.cpu)
                    .map_err(|e| err("spec.container.resources.limits.cpu", e.to_string()))?,
            )
        },
        memory_bytes: if limits.memory.is_empty() {
            None
        } else {
            Some(
                kat_proto::quantity::parse_memory_bytes(&limits.memory)
                    .map_err(|e| err("spec.container.resources.limits.memory", e.to_string()))?,
            )
        },
        gpus: Vec::new(),
    };
    let plan = crate::volumes::plan(
        &ctx.volume_base,
        &ctx.protected_paths,
        ns,
        name,
        &spec.volumes,
        &container.volume_mounts,
    )
    .map_err(|e| match e {
        crate::RuntimeError::InvalidOptions { field, reason } => {
            err(&format!("spec.{field}"), reason)
        }
        other => err("spec.volumes", other.to_string()),
    })?;
    let vlb = quadlet
        .virtual_load_balancer
        .as_ref()
        .and_then(|v| v.spec.clone())
        .unwrap_or_default();
    let ports = vlb
        .ports
        .iter()
        .map(|p| PortMapping {
            container_port: u16::try_from(p.container_port).unwrap_or(0),
            host_port: u16::try_from(p.host_port).ok().filter(|&h| h != 0),
            protocol: if p.protocol() == SpecProtocol::Udp {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
        })
        .collect();
    let health = vlb.health_check.as_ref().and_then(|h| {
        let command = h.exec.as_ref()?.command.clone();
        (!command.is_empty()).then(|| HealthProbe {
            command,
            initial_delay: Duration::from_secs(u64::from(h.initial_delay_seconds)),
            period: secs(h.period_seconds, 10),
            timeout: secs(h.timeout_seconds, 1),
            success_threshold: h.success_threshold.max(1),
            failure_threshold: h.failure_threshold.max(1),
        })
    });
    let labels: BTreeMap<String, String> = workload
        .metadata
        .as_ref()
        .map(|m| {
            m.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(DesiredInstance {
        opts: ContainerCreateOptions {
            instance_id: id.clone(),
            namespace: ns.clone(),
            workload: name.clone(),
            name: container_name(ns, name, id),
            image,
            hostname: Some(format!("{name}-{id}")),
            command: container.command.clone(),
            args: container.args.clone(),
            env: container
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            labels,
            restart,
            resources,
            ports,
            volumes: plan.mounts,
            network: ctx.network.clone(),
            ip: instance.ip.parse().ok(),
            systemd_mode: true,
            ..Default::default()
        },
        health,
        ensure: plan.ensure,
    })
}

/// The desired set for a list of assignments; the ones that cannot run are returned
/// apart, with why.
pub fn desired_set(
    assignments: &[Assignment],
    ctx: &SpecContext,
) -> (Vec<DesiredInstance>, Vec<(String, SpecError)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for a in assignments {
        match desired_instance(a, ctx) {
            Ok(d) => ok.push(d),
            Err(e) => bad.push((
                a.instance
                    .as_ref()
                    .map(|i| i.id.clone())
                    .unwrap_or_default(),
                e,
            )),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kat_proto::v1alpha1::{
        Container, EnvVar, ExecAction, HealthCheck, Instance, ObjectMeta, ResourceList, Resources,
        RestartPolicy as SpecRestart, ServicePort, SimpleClusterStorage, Source,
        VirtualLoadBalancer, VirtualLoadBalancerSpec, Volume, VolumeMount, Workload, WorkloadSpec,
        volume,
    };

    fn ctx() -> SpecContext {
        SpecContext {
            volume_base: PathBuf::from("/var/lib/kat/volumes"),
            protected_paths: vec![PathBuf::from("/srv/kat-state")],
            network: None,
        }
    }

    fn assignment(spec: WorkloadSpec, vlb: Option<VirtualLoadBalancerSpec>) -> Assignment {
        let quadlet = Quadlet {
            workload: Some(Workload {
                metadata: Some(ObjectMeta {
                    name: "web".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                spec: Some(spec),
                ..Default::default()
            }),
            virtual_load_balancer: vlb.map(|spec| VirtualLoadBalancer {
                spec: Some(spec),
                ..Default::default()
            }),
            ..Default::default()
        };
        Assignment {
            instance: Some(Instance {
                id: "ab12".into(),
                namespace: "default".into(),
                workload: "web".into(),
                node: "n1".into(),
                generation: 1,
                ..Default::default()
            }),
            quadlet: quadlet.encode_to_vec(),
        }
    }

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            source: Some(Source {
                kind: Some(source::Kind::Image("docker.io/library/nginx:1.27".into())),
                cache_image: String::new(),
            }),
            restart_policy: Some(SpecRestart {
                condition: RestartCondition::MaxCount.into(),
                max_restarts: 5,
                reset_seconds: 3600,
            }),
            container: Some(Container {
                command: vec!["/usr/sbin/nginx".into()],
                args: vec!["-g".into(), "daemon off;".into()],
                env: vec![EnvVar {
                    name: "GREETING".into(),
                    value: "hello".into(),
                }],
                volume_mounts: vec![VolumeMount {
                    name: "data".into(),
                    mount_path: "/var/data".into(),
                    sub_path: String::new(),
                    read_only: false,
                }],
                resources: Some(Resources {
                    limits: Some(ResourceList {
                        cpu: "500m".into(),
                        memory: "256Mi".into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: vec![Volume {
                name: "data".into(),
                source: Some(volume::Source::SimpleClusterStorage(
                    SimpleClusterStorage {},
                )),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_assignment_becomes_the_container_the_workload_describes() {
        let vlb = VirtualLoadBalancerSpec {
            ports: vec![ServicePort {
                name: "http".into(),
                container_port: 80,
                protocol: SpecProtocol::Tcp.into(),
                host_port: 0,
            }],
            health_check: Some(HealthCheck {
                exec: Some(ExecAction {
                    command: vec!["true".into()],
                }),
                period_seconds: 10,
                failure_threshold: 3,
                ..Default::default()
            }),
            ingress: Vec::new(),
        };
        let d = desired_instance(&assignment(spec(), Some(vlb)), &ctx()).unwrap();
        let o = &d.opts;
        assert_eq!(o.name, "kat-default-web-ab12");
        assert_eq!(o.image, "docker.io/library/nginx:1.27");
        assert_eq!(o.command, ["/usr/sbin/nginx"]);
        assert_eq!(o.args, ["-g", "daemon off;"]);
        assert_eq!(o.env["GREETING"], "hello");
        assert_eq!(
            o.restart,
            RestartPolicy::MaxCount {
                max_restarts: 5,
                reset_seconds: 3600
            }
        );
        assert_eq!(o.resources.cpu_millis, Some(500));
        assert_eq!(o.resources.memory_bytes, Some(256 << 20));
        assert_eq!(
            o.volumes[0].source,
            PathBuf::from("/var/lib/kat/volumes/default/web/data")
        );
        assert_eq!(o.ports[0].container_port, 80);
        assert_eq!(o.ports[0].host_port, None);
        assert!(o.systemd_mode);
        let h = d.health.unwrap();
        assert_eq!(
            (h.period, h.failure_threshold),
            (Duration::from_secs(10), 3)
        );
        assert_eq!(d.ensure.len(), 1);
    }

    #[test]
    fn assignments_that_cannot_run_say_why() {
        let mut git = spec();
        git.source = Some(Source {
            kind: Some(source::Kind::Git(Default::default())),
            cache_image: String::new(),
        });
        let mut bad_mount = spec();
        bad_mount.volumes.clear();
        let (ok, bad) = desired_set(
            &[
                assignment(spec(), None),
                assignment(git, None),
                assignment(bad_mount, None),
                Assignment {
                    instance: None,
                    quadlet: Vec::new(),
                },
            ],
            &ctx(),
        );
        assert_eq!(ok.len(), 1);
        let fields: Vec<&str> = bad.iter().map(|(_, e)| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.source.git",
                "spec.container.volumeMounts[0].name",
                "instance"
            ]
        );
    }
}
