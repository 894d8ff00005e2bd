//! Drain (SPEC §6, §11), as the leader runs it: the node is marked draining (and so
//! cordoned; the scheduler moves its instances), then progress is reported until no
//! instance is left there or the limit passes (the node stays draining either way).

use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::DrainProgress;

use super::context::LeaderContext;
use crate::state::{self, StateError, StateResult};

/// How often progress is looked at.
const POLL: Duration = Duration::from_millis(500);

/// Drains node `name`; see the module docs.
pub async fn drain(
    ctx: LeaderContext,
    name: String,
    limit: Duration,
) -> StateResult<tokio::sync::mpsc::Receiver<StateResult<DrainProgress>>> {
    state::nodes::update(
        &ctx.leadership,
        &name,
        "NodeDraining",
        state::nodes::start_draining,
        SystemTime::now(),
    )
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let first = state::nodes::instances_on(ctx.store(), &name)
            .await
            .unwrap_or(0);
        let mut last = None;
        loop {
            let remaining = match state::nodes::instances_on(ctx.store(), &name).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let done = remaining == 0;
            if last != Some(remaining) || done {
                let progress = DrainProgress {
                    remaining,
                    moved: first.saturating_sub(remaining),
                    message: if done {
                        format!("node {name} drained")
                    } else {
                        format!("{remaining} instance(s) still on {name}")
                    },
                    done,
                };
                if tx.send(Ok(progress)).await.is_err() || done {
                    return;
                }
                last = Some(remaining);
            }
            if started.elapsed() > limit {
                let late = StateError::TimedOut(format!(
                    "{remaining} instance(s) still on {name} after {limit:?}; the node stays draining"
                ));
                let _ = tx.send(Err(late)).await;
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    Ok(rx)
}
