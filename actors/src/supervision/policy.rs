//! The pure parts of supervision: which children a strategy restarts, restart
//! intensity, and restart backoff. No actors here; the `Supervisor` actor applies them.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;

/// What happens to the siblings of a child that exits and is to be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the exited child is restarted.
    OneForOne,
    /// The exited child and every child started after it are restarted.
    RestForOne,
    /// Every child is restarted.
    OneForAll,
}

/// The children (by start-order index) a strategy restarts when child `failed` of `count` exits.
pub fn affected(strategy: Strategy, failed: usize, count: usize) -> Range<usize> {
    match strategy {
        Strategy::OneForOne => failed..failed + 1,
        Strategy::RestForOne => failed..count,
        Strategy::OneForAll => 0..count,
    }
}

/// When a child is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after a failure (an error or panic), not after a normal stop.
    Transient,
    /// Never; the child is dropped from the supervisor when it exits.
    Temporary,
}

impl Restart {
    pub fn restarts_after(self, failed: bool) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => failed,
            Restart::Temporary => false,
        }
    }
}

/// Restart intensity: at most `max_restarts` restarts within `window`; one more and the
/// supervisor gives up and fails itself, escalating to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: usize,
    pub window: Duration,
}

/// The restart that exceeded the intensity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {max_restarts} restarts within {window:?}")]
pub struct Meltdown {
    pub max_restarts: usize,
    pub window: Duration,
}

/// Times of recent restarts, pruned to the intensity window.
#[derive(Debug, Clone, Default)]
pub struct RestartLog {
    restarts: VecDeque<Instant>,
}

impl RestartLog {
    /// Records a restart at `now`; `Err` once the intensity is exceeded.
    pub fn record(&mut self, intensity: &Intensity, now: Instant) -> Result<(), Meltdown> {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= intensity.window)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        if self.restarts.len() > intensity.max_restarts {
            Err(Meltdown {
                max_restarts: intensity.max_restarts,
                window: intensity.window,
            })
        } else {
            Ok(())
        }
    }

    pub fn recent(&self) -> usize {
        self.restarts.len()
    }
}

/// Delay before restarting a child that keeps failing: `initial`, doubled for each
/// consecutive quick failure, at most `max`. Zero `initial` restarts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const NONE: Backoff = Backoff {
        initial: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// Delay for the `consecutive`-th quick restart (1 for the first).
    pub fn delay(&self, consecutive: u32) -> Duration {
        if consecutive == 0 || self.initial.is_zero() {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(consecutive - 1);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_pick_the_right_children() {
        assert_eq!(affected(Strategy::OneForOne, 1, 4), 1..2);
        assert_eq!(affected(Strategy::RestForOne, 1, 4), 1..4);
        assert_eq!(affected(Strategy::RestForOne, 3, 4), 3..4);
        assert_eq!(affected(Strategy::OneForAll, 2, 4), 0..4);
    }

    #[test]
    fn restart_policies() {
        assert!(Restart::Permanent.restarts_after(false));
        assert!(Restart::Transient.restarts_after(true));
        assert!(!Restart::Transient.restarts_after(false));
        assert!(!Restart::Temporary.restarts_after(true));
    }

    #[test]
    fn intensity_allows_max_restarts_in_the_window_then_melts_down() {
        let intensity = Intensity {
            max_restarts: 3,
            window: Duration::from_secs(10),
        };
        let mut log = RestartLog::default();
        let t0 = Instant::now();
        for s in [0, 1, 2] {
            assert!(log.record(&intensity, t0 + Duration::from_secs(s)).is_ok());
        }
        assert!(
            log.record(&intensity, t0 + Duration::from_secs(3)).is_err(),
            "the 4th within 10 s"
        );
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let intensity = Intensity {
            max_restarts: 2,
            window: Duration::from_secs(10),
        };
        let mut log = RestartLog::default();
        let t0 = Instant::now();
        assert!(log.record(&intensity, t0).is_ok());
        assert!(log.record(&intensity, t0 + Duration::from_secs(5)).is_ok());
        assert!(
            log.record(&intensity, t0 + Duration::from_secs(12)).is_ok(),
            "t0 has left the window"
        );
        assert_eq!(log.recent(), 2);
        assert!(
            log.record(&intensity, t0 + Duration::from_secs(13))
                .is_err()
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (0..7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(Backoff::NONE.delay(5), Duration::ZERO);
    }
}
