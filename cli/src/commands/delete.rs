//! `katcall delete`: a workload (and its instances, optionally its volumes), a
//! namespace, or a drained node.

use std::process::ExitCode;

use clap::Subcommand;
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::remote::{Client, CmdError, CmdResult, remote, remote_with};

/// How long `delete workload --purge-volumes` waits for the leader's answer: the leader
/// gives each node 30 s to retire the instances and 15 s more for the call
/// (`leader::relay::PURGE_CALL_WAIT`), all nodes at once.
pub const PURGE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Delete a workload, namespace or node.
#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a workload and its instances.
    Workload {
        name: String,
        /// Also remove its simpleClusterStorage volumes.
        #[arg(long)]
        purge_volumes: bool,
    },
    /// Delete a namespace (refused while it has workloads, unless --cascade).
    Namespace {
        name: String,
        #[arg(long)]
        cascade: bool,
    },
    /// Remove a drained node from the cluster.
    Node { name: String },
}

pub fn run(command: DeleteCommand, globals: &GlobalArgs) -> ExitCode {
    let source = globals.config_source();
    match command {
        // A purge waits on every node for the workload's instances to go (up to
        // 30 s there, plus the call): more than a plain call's 10 s.
        DeleteCommand::Workload {
            name,
            purge_volumes,
        } => remote_with(
            &source,
            "delete",
            if purge_volumes {
                PURGE_CALL_TIMEOUT
            } else {
                kat_actors::client::CALL_TIMEOUT
            },
            |client| delete_workload(client, globals.namespace(), name.clone(), purge_volumes),
        ),
        DeleteCommand::Namespace { name, cascade } => remote(&source, "delete", |client| {
            delete_namespace(client, name.clone(), cascade)
        }),
        DeleteCommand::Node { name } => remote(&source, "delete", |client| {
            delete_node(client, name.clone())
        }),
    }
}

/// `katcall delete workload NAME [--purge-volumes]`.
async fn delete_workload(
    mut client: Client,
    namespace: Option<&str>,
    name: String,
    purge_volumes: bool,
) -> CmdResult {
    let ns = namespace.unwrap_or("default").to_owned();
    let answer = client
        .delete_workload(api::DeleteWorkloadRequest {
            namespace: ns.clone(),
            name: name.clone(),
            purge_volumes,
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    if answer.already_deleted {
        println!("workload {ns}/{name} was already deleted; purging what it left");
    } else {
        println!("workload {ns}/{name} deleted");
    }
    if purge_volumes {
        if !answer.purged_nodes.is_empty() {
            println!("volumes removed on {}", answer.purged_nodes.join(", "));
        }
        for failure in &answer.purge_failures {
            eprintln!("volumes kept: {failure}");
        }
        if !answer.purge_failures.is_empty() {
            return Err(format!(
                "the workload is deleted, but volumes are left on {} node(s); run this again \
                 when they are back (or remove volumeBasePath/{ns}/{name} there by hand)",
                answer.purge_failures.len()
            )
            .into());
        }
    }
    Ok(())
}

/// `katcall delete namespace NAME [--cascade]`.
async fn delete_namespace(mut client: Client, name: String, cascade: bool) -> CmdResult {
    client
        .delete_namespace(api::DeleteNamespaceRequest {
            name: name.clone(),
            cascade,
        })
        .await
        .map_err(CmdError::from)?;
    println!("namespace {name} deleted");
    Ok(())
}

/// `katcall delete node NAME`.
async fn delete_node(mut client: Client, name: String) -> CmdResult {
    client
        .delete_node(api::GetNodeRequest { name: name.clone() })
        .await
        .map_err(CmdError::from)?;
    println!("node {name} removed from the cluster");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_is_waited_for_as_long_as_the_leader_may_take() {
        let leader_takes = kat_actors::leader::relay::PURGE_CALL_WAIT;
        assert!(
            PURGE_CALL_TIMEOUT > leader_takes,
            "{PURGE_CALL_TIMEOUT:?} <= {leader_takes:?}"
        );
    }
}
