//! JOB workloads (SPEC §8.4), planned purely like the rest: an *execution* runs until
//! `completions` runs have succeeded, with at most `parallelism` at once; failed runs
//! are retried after 10 s, 20 s, 40 s … (at most 5 min) until more than
//! `backoffLimit` have failed; `activeDeadlineSeconds` fails the whole execution.
//! Without a `schedule` one execution runs per generation (apply runs it once; a
//! changed spec runs again); with one, each cron tick starts an execution, unless
//! the previous one is still active: then the tick is skipped, with an event. The
//! job's progress is kept in a [`JobState`]; the instances of the last three
//! executions are kept as history.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_proto::v1alpha1::{EventSeverity, Instance, InstancePhase, JobState};

use super::place::Snapshot;
use super::plan::{IdMaker, Subject, WorkloadPlan, place_pending};

/// Executions whose instances are kept.
const KEEP_EXECUTIONS: u32 = 3;
/// First retry delay after a failed run; doubles per failure, capped.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

fn seconds(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).unwrap_or(i64::MAX)
}

fn phase(i: &Instance) -> InstancePhase {
    i.status
        .as_ref()
        .map_or(InstancePhase::Pending, |s| s.phase())
}

fn finished(i: &Instance) -> bool {
    matches!(phase(i), InstancePhase::Succeeded | InstancePhase::Failed)
}

/// The delay before the next run after `failures` failed runs.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    (BACKOFF_START * factor).min(BACKOFF_MAX)
}

/// The first and the latest tick of `cron` after `since` and at or before `now`: a
/// leader that was down for hours runs one execution, for the latest, not one per
/// tick it missed. Looks back an hour, then a day, then a year, then all the way to
/// `since`, so a frequent schedule is not walked tick by tick.
fn due_ticks(cron: &kat_proto::cron::CronSchedule, since: i64, now: i64) -> Option<(i64, i64)> {
    let first = cron.next_after(since).filter(|t| *t <= now)?;
    for window in [3_600, 86_400, 366 * 86_400, i64::MAX] {
        let mut at = since.max(now.saturating_sub(window));
        let mut latest = None;
        while let Some(t) = cron.next_after(at).filter(|t| *t <= now) {
            latest = Some(t);
            at = t;
        }
        if let Some(latest) = latest {
            return Some((first, latest));
        }
    }
    Some((first, first))
}

/// Plans a JOB: `alive` are its instances not on lost nodes; `state` its progress so
/// far. Sets `plan.job_state` when the progress changes.
#[allow(clippy::too_many_lines)]
pub fn plan_job(
    s: &Subject<'_>,
    alive: Vec<Instance>,
    state: Option<&JobState>,
    snapshot: &mut Snapshot,
    new_id: IdMaker<'_>,
    plan: &mut WorkloadPlan,
) {
    let (generation, now) = (s.generation, s.now);
    let spec = s
        .quadlet
        .job
        .as_ref()
        .and_then(|j| j.spec.clone())
        .unwrap_or_default();
    let completions = spec.completions.max(1);
    let parallelism = spec.parallelism.max(1);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let now_s = seconds(now);
    let mut st = state.cloned().unwrap_or_default();
    let before = st.clone();
    let active_execution = st.execution > 0 && !st.complete && !st.failed;

    // Start an execution: once per generation, or at each cron tick.
    if spec.schedule.trim().is_empty() {
        if st.execution == 0 || (st.generation != generation && !active_execution) {
            start(&mut st, generation, now_s);
        }
    } else if let Ok(cron) = kat_proto::cron::parse(&spec.schedule) {
        let since = if st.last_tick_seconds > 0 {
            st.last_tick_seconds
        } else {
            s.quadlet
                .workload
                .as_ref()
                .and_then(|w| w.metadata.as_ref())
                .and_then(|m| m.created_at.as_ref())
                .map_or(now_s, |t| t.seconds)
        };
        if let Some((first, tick)) = due_ticks(&cron, since, now_s) {
            st.last_tick_seconds = tick;
            if first < tick {
                // No leader ran the ticks between (downtime): the latest one counts.
                plan.events.push((
                    "JobTicksMissed".to_owned(),
                    EventSeverity::Warning,
                    format!(
                        "the ticks from {} to {} passed while no leader scheduled; only the latest runs",
                        rfc3339(first),
                        rfc3339(tick)
                    ),
                ));
            }
            if active_execution {
                plan.events.push((
                    "JobTickSkipped".to_owned(),
                    EventSeverity::Warning,
                    format!(
                        "execution {} still runs at the tick of {}; tick skipped",
                        st.execution,
                        rfc3339(tick)
                    ),
                ));
            } else {
                start(&mut st, generation, now_s);
            }
        }
    }

    // History: the instances of old executions beyond the last few go.
    let mut current = Vec::new();
    for i in alive {
        if i.job_run == st.execution {
            current.push(i);
        } else if i.job_run + KEEP_EXECUTIONS <= st.execution || !finished(&i) {
            // Unfinished runs of an older execution are stopped too.
            plan.delete.push(i);
        }
    }

    if st.execution > 0 && !st.complete && !st.failed {
        let succeeded = current
            .iter()
            .filter(|i| phase(i) == InstancePhase::Succeeded)
            .count();
        let failed: Vec<&Instance> = current
            .iter()
            .filter(|i| phase(i) == InstancePhase::Failed)
            .collect();
        let active = current.len() - succeeded - failed.len();
        let failures = u32::try_from(failed.len()).unwrap_or(u32::MAX);
        let deadline = spec.active_deadline_seconds;
        if succeeded >= completions as usize {
            st.complete = true;
            st.message = format!("{succeeded} of {completions} runs succeeded");
            plan.events.push((
                "JobCompleted".to_owned(),
                EventSeverity::Normal,
                format!("execution {}: {}", st.execution, st.message),
            ));
        } else if failures > backoff_limit {
            fail(
                &mut st,
                plan,
                &mut current,
                format!("{failures} runs failed (backoffLimit {backoff_limit})"),
            );
        } else if deadline > 0 && now_s - st.started_seconds > i64::from(deadline) {
            fail(
                &mut st,
                plan,
                &mut current,
                format!("activeDeadlineSeconds ({deadline} s) passed"),
            );
        } else {
            let room = (parallelism as usize).saturating_sub(active);
            let needed = (completions as usize).saturating_sub(succeeded + active);
            // After a failure, wait before the next run.
            let last_failure = failed
                .iter()
                .filter_map(|i| i.status.as_ref()?.finished_at.as_ref().map(|t| t.seconds))
                .max();
            let waiting = failures > 0
                && last_failure.is_some_and(|t| {
                    now_s < t + i64::try_from(backoff(failures).as_secs()).unwrap_or(i64::MAX)
                });
            let mut runs = current.clone();
            if !waiting {
                for _ in 0..room.min(needed) {
                    let mut i = s.new_instance(new_id());
                    i.job_run = st.execution;
                    runs.push(i);
                }
            }
            place_pending(&s.demand, runs, snapshot, plan);
        }
    }
    if st != before {
        plan.job_state = Some(st);
    }
}

/// `seconds` since the epoch as RFC 3339 text.
fn rfc3339(seconds: i64) -> String {
    let t =
        kat_proto::timestamp(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)));
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| seconds.to_string())
}

fn start(st: &mut JobState, generation: i64, now_s: i64) {
    st.execution += 1;
    st.generation = generation;
    st.started_seconds = now_s;
    st.complete = false;
    st.failed = false;
    st.message.clear();
}

fn fail(st: &mut JobState, plan: &mut WorkloadPlan, current: &mut Vec<Instance>, why: String) {
    st.failed = true;
    st.message.clone_from(&why);
    plan.events.push((
        "JobFailed".to_owned(),
        EventSeverity::Warning,
        format!("execution {}: {why}", st.execution),
    ));
    // Runs still going are stopped.
    for i in current.drain(..) {
        if !finished(&i) {
            plan.delete.push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::due_ticks;

    #[test]
    fn due_ticks_are_the_first_and_the_latest_passed() {
        let minutely = kat_proto::cron::parse("* * * * *").unwrap();
        assert_eq!(due_ticks(&minutely, 0, 30), None, "none yet");
        assert_eq!(due_ticks(&minutely, 0, 60), Some((60, 60)));
        assert_eq!(due_ticks(&minutely, 0, 5 * 3600 + 30), Some((60, 5 * 3600)));
        // Weekly (Sundays at 00:00; 1970-01-01 was a Thursday): found beyond a day.
        let weekly = kat_proto::cron::parse("0 0 * * 0").unwrap();
        let day = 86_400;
        assert_eq!(due_ticks(&weekly, 0, 30 * day), Some((3 * day, 24 * day)));
    }
}
