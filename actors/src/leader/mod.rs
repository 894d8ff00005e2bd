//! The leader subtree (SPEC §3): `LeaderSupervisor` (one_for_one), started in the
//! control-plane supervisor when this node wins the election and stopped when it loses.
//! Every write its actors make is fenced by the election key.
//!
//! So far it holds [`Bootstrap`], which records the cluster's identity and
//! configuration the first time a leader exists. Pki, Scheduler, Ipam, NodeMonitor,
//! Api and Backup join it in later issues.

use std::sync::Arc;
use std::time::Duration;

use kat_proto::v1alpha1::ClusterConfiguration;
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::election::{Election, LeaderSubtree, Leadership};
use crate::store::{Compare, StateStore, Txn, TxnOp, TxnOpResult};
use crate::supervision::{
    Backoff, ChildSpec, Intensity, Restart, StartFn, Strategy, Supervisor, SupervisorArgs,
};

/// `/kat/config/cluster_uid`: the cluster's identity, written once.
pub const CLUSTER_UID_KEY: &str = "/kat/config/cluster_uid";
/// `/kat/config/cluster`: the ClusterConfiguration, protobuf-encoded, written once.
pub const CLUSTER_CONFIG_KEY: &str = "/kat/config/cluster";

/// The leader subtree for this node: a `LeaderSupervisor` holding the leader's actors.
pub fn leader_subtree(cluster: ClusterConfiguration) -> LeaderSubtree {
    Arc::new(move |leadership: Leadership| {
        let name = Election::leader_subtree_name(&leadership.node);
        let cluster = cluster.clone();
        let supervisor_name = name.clone();
        ChildSpec {
            name,
            // Only a new election brings the leader subtree back (see Election).
            restart: Restart::Temporary,
            shutdown_timeout: Duration::from_secs(15),
            start: StartFn::new(move |parent| {
                let bootstrap_args = BootstrapArgs {
                    leadership: leadership.clone(),
                    cluster: cluster.clone(),
                };
                let bootstrap = ChildSpec::actor(
                    format!("bootstrap@{}", leadership.node),
                    Bootstrap,
                    move || bootstrap_args.clone(),
                );
                let args = SupervisorArgs {
                    strategy: Strategy::OneForOne,
                    intensity: Intensity {
                        max_restarts: 5,
                        window: Duration::from_secs(60),
                    },
                    backoff: Backoff {
                        initial: Duration::from_millis(200),
                        max: Duration::from_secs(10),
                    },
                    children: vec![bootstrap],
                };
                let name = supervisor_name.clone();
                async move {
                    let (sup, _) =
                        Actor::spawn_linked(Some(name), Supervisor, args, parent).await?;
                    Ok(sup.get_cell())
                }
            }),
        }
    })
}

#[derive(Clone)]
pub struct BootstrapArgs {
    pub leadership: Leadership,
    pub cluster: ClusterConfiguration,
}

/// Writes the cluster UID and configuration in one fenced transaction, once per
/// cluster; a later leader (or a re-run `kat-agent init`) finds them and resumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bootstrap;

/// A new random cluster UID (RFC 4122 version 4 layout).
fn new_uid() -> Result<String, ActorProcessingErr> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no randomness available for the cluster UID")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    ))
}

/// Records the cluster once; returns the UID and whether this call created it.
pub async fn record_cluster(
    store: &dyn StateStore,
    leadership: &Leadership,
    cluster: &ClusterConfiguration,
) -> Result<(String, bool), ActorProcessingErr> {
    let uid = new_uid()?;
    let txn = Txn::new()
        .when([Compare::absent(CLUSTER_UID_KEY), leadership.key.fence()])
        .and_then([
            TxnOp::put(CLUSTER_UID_KEY, uid.clone()),
            TxnOp::put(CLUSTER_CONFIG_KEY, cluster.encode_to_vec()),
        ])
        .or_else([TxnOp::get(CLUSTER_UID_KEY)]);
    let result = store.txn(txn).await?;
    if result.succeeded {
        return Ok((uid, true));
    }
    match result.results.first() {
        Some(TxnOpResult::Get(kvs)) if !kvs.is_empty() => {
            Ok((String::from_utf8_lossy(&kvs[0].value).into_owned(), false))
        }
        _ => Err("not the leader any more; cluster not recorded".into()),
    }
}

impl Actor for Bootstrap {
    type Msg = ();
    type State = ();
    type Arguments = BootstrapArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: BootstrapArgs,
    ) -> Result<(), ActorProcessingErr> {
        let store = args.leadership.store.clone();
        let (uid, created) =
            record_cluster(store.as_ref(), &args.leadership, &args.cluster).await?;
        let name = args
            .cluster
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        if created {
            tracing::info!(node = %args.leadership.node, cluster = %name, %uid, "cluster created");
        } else {
            tracing::info!(node = %args.leadership.node, %uid, "cluster exists; resuming");
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<()>,
        _msg: (),
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}
