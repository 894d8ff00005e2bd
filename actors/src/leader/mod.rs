//! The leader subtree (SPEC §3): `leader@N`, a one_for_one supervisor that the
//! control-plane subtree adds when this node wins the election and removes when it
//! loses. Every write its actors and handlers make is fenced by the election key
//! (`crate::state::Leadership`).
//!
//! | child | what it does |
//! |---|---|
//! | `bootstrap@N` ([`bootstrap`]) | records the cluster's identity, configuration and CA once; init's node files |
//! | `node-monitor@N` ([`node_monitor`]) | marks silent nodes NotReady; promotes etcd learners |
//! | `scheduler@N` ([`scheduler`]) | places, replaces and removes instances; rollouts and jobs |
//! | `store-maintenance@N` ([`maintenance`]) | compacts etcd's history, defragments members, recovers from NOSPACE |
//! | `api@N` ([`serving`]) | puts the [`LeaderContext`] where the API is served from |
//! | `backups@N` ([`backups`]) | periodic etcd snapshots |
//!
//! Restart: 5 in 60 s, backoff 200 ms → 10 s; giving up ends the leadership (Election
//! steps down and campaigns again).
//!
//! The leader's side of the node API lives here as plain functions the API adapters
//! (and the simulation's in-process link) call: [`join`], [`heartbeats`] (intake),
//! [`sync`] (the sync stream), [`renewal`]; and what user calls need beyond a state
//! read or write: [`relay`] (logs, exec and purges through the agent API) and
//! [`drain`].

pub mod backups;
pub mod bootstrap;
mod context;
pub mod drain;
pub mod heartbeats;
pub mod join;
pub mod maintenance;
pub mod node_monitor;
pub mod relay;
pub mod renewal;
pub mod scheduler;
pub mod serving;
pub mod sync;

use std::time::{Duration, SystemTime};

use kat_proto::quadlet::ClusterSettings;
use ractor::Actor;

pub use bootstrap::LocalFiles;
pub use context::{ControlPlaneCache, LeaderContext, certificate_is_current};
pub use serving::{ApiDirectory, ApiEndpoint, ApiSlot, new_api_slot};

use crate::pki::local::ClusterPki;
use crate::state::Leadership;
use crate::supervision::{
    Backoff, ChildSpec, Intensity, Restart, StartFn, Strategy, Supervisor, SupervisorArgs,
};

/// Actor name of node `node`'s leader subtree.
pub fn supervisor_name(node: &str) -> String {
    format!("leader@{node}")
}

/// What a node's leader subtree is made from, besides the leadership it won.
#[derive(Clone)]
pub struct LeaderSetup {
    pub settings: ClusterSettings,
    /// The CAs the leader signs with.
    pub pki: ClusterPki,
    /// init's node: the files Bootstrap writes.
    pub local: Option<LocalFiles>,
    /// Where the API is served (none: the leader runs without an API, in tests).
    pub api: Option<ApiEndpoint>,
    /// The wall clock heartbeat times are compared on (simulations pass their own).
    pub clock: fn() -> SystemTime,
}

/// The leader subtree for `leadership`: a supervisor holding the leader's actors.
pub fn subtree_spec(leadership: Leadership, setup: &LeaderSetup) -> ChildSpec {
    let name = supervisor_name(&leadership.node);
    let setup = setup.clone();
    let supervisor_name = name.clone();
    ChildSpec {
        name,
        // Only a new election brings the leader subtree back (see Election).
        restart: Restart::Temporary,
        shutdown_timeout: Duration::from_secs(15),
        // Election sets this to hear when the subtree dies on its own.
        on_exit: None,
        on_restart: None,
        start: StartFn::new(move |parent| {
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
                children: children(&leadership, &setup),
            };
            let name = supervisor_name.clone();
            async move {
                let (sup, _) = Actor::spawn_linked(Some(name), Supervisor, args, parent).await?;
                Ok(sup.get_cell())
            }
        }),
    }
}

/// The leader's actors, in start order.
fn children(leadership: &Leadership, setup: &LeaderSetup) -> Vec<ChildSpec> {
    let node = &leadership.node;
    let bootstrap_args = bootstrap::BootstrapArgs {
        leadership: leadership.clone(),
        settings: setup.settings.clone(),
        pki: setup.pki.clone(),
        local: setup.local.clone(),
    };
    let monitor_args = node_monitor::NodeMonitorArgs {
        leadership: leadership.clone(),
        settings: setup.settings.clone(),
        now: setup.clock,
    };
    let scheduler_args = scheduler::SchedulerArgs {
        leadership: leadership.clone(),
        settings: setup.settings.clone(),
        now: setup.clock,
    };
    let maintenance_args = maintenance::MaintenanceArgs {
        leadership: leadership.clone(),
        every: maintenance::EVERY,
        retention: maintenance::RETENTION,
        now: setup.clock,
    };
    let backups_args = backups::BackupsArgs {
        leadership: leadership.clone(),
        settings: setup.settings.clone(),
        pki: setup.pki.clone(),
        now: setup.clock,
    };
    let mut children = vec![
        ChildSpec::actor(
            format!("bootstrap@{node}"),
            bootstrap::Bootstrap,
            move || bootstrap_args.clone(),
        ),
        ChildSpec::actor(
            node_monitor::NodeMonitor::name(node),
            node_monitor::NodeMonitor,
            move || monitor_args.clone(),
        ),
        ChildSpec::actor(
            scheduler::Scheduler::name(node),
            scheduler::Scheduler,
            move || scheduler_args.clone(),
        ),
        ChildSpec::actor(
            maintenance::StoreMaintenance::name(node),
            maintenance::StoreMaintenance,
            move || maintenance_args.clone(),
        ),
    ];
    if let Some(endpoint) = setup.api.clone() {
        let api_args = serving::ApiArgs {
            leadership: leadership.clone(),
            settings: setup.settings.clone(),
            pki: setup.pki.clone(),
            endpoint,
        };
        children.push(ChildSpec::actor(
            serving::Api::name(node),
            serving::Api,
            move || api_args.clone(),
        ));
    }
    // After the API: serving comes before the first snapshot.
    children.push(ChildSpec::actor(
        backups::Backups::name(node),
        backups::Backups,
        move || backups_args.clone(),
    ));
    children
}
