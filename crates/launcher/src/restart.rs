//! When to restart a crashed service: exponential backoff, reset after a stable run, and a
//! crash-loop cap after which the launcher gives up. Pure, driven by the caller's clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::config::LauncherConfig;

/// What to do after a service exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    RestartAfter(Duration),
    /// The service crashed `restarts` times within the crash-loop window.
    GiveUp {
        restarts: usize,
    },
}

/// Restart bookkeeping for one service.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    initial: Duration,
    max: Duration,
    max_restarts: usize,
    window: Duration,
    /// Restart times within the window.
    recent: VecDeque<Instant>,
    /// Crashes since the last stable run; the exponent of the backoff.
    consecutive: u32,
}

impl RestartPolicy {
    pub fn new(config: &LauncherConfig) -> Self {
        Self {
            initial: config.restart_backoff_initial,
            max: config.restart_backoff_max,
            max_restarts: config.crash_loop_max_restarts as usize,
            window: config.crash_loop_window,
            recent: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// Called when the service exited at `now` after running for `ran_for`.
    pub fn on_exit(&mut self, now: Instant, ran_for: Duration) -> RestartDecision {
        if ran_for >= self.window {
            self.consecutive = 0;
        }
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts {
            return RestartDecision::GiveUp { restarts: self.recent.len() };
        }
        self.recent.push_back(now);
        let delay = self.initial.saturating_mul(1u32 << self.consecutive.min(20)).min(self.max);
        self.consecutive = self.consecutive.saturating_add(1);
        RestartDecision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::clock::{Clock, ManualClock};

    fn policy() -> RestartPolicy {
        RestartPolicy::new(&LauncherConfig {
            restart_backoff_initial: Duration::from_millis(500),
            restart_backoff_max: Duration::from_secs(5),
            crash_loop_max_restarts: 5,
            crash_loop_window: Duration::from_secs(60),
            ..LauncherConfig::default()
        })
    }

    fn ms(n: u64) -> RestartDecision {
        RestartDecision::RestartAfter(Duration::from_millis(n))
    }

    #[test]
    fn backs_off_exponentially_then_gives_up_in_a_crash_loop() {
        let clock = ManualClock::default();
        let mut p = policy();
        let quick = Duration::from_millis(10);
        for expected in [500, 1000, 2000, 4000, 5000] {
            assert_eq!(p.on_exit(clock.now(), quick), ms(expected));
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(p.on_exit(clock.now(), quick), RestartDecision::GiveUp { restarts: 5 });
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let clock = ManualClock::default();
        let mut p = policy();
        assert_eq!(p.on_exit(clock.now(), Duration::ZERO), ms(500));
        assert_eq!(p.on_exit(clock.now(), Duration::ZERO), ms(1000));
        clock.advance(Duration::from_secs(120));
        assert_eq!(p.on_exit(clock.now(), Duration::from_secs(120)), ms(500));
    }

    #[test]
    fn crashes_spread_beyond_the_window_never_give_up() {
        let clock = ManualClock::default();
        let mut p = policy();
        for _ in 0..50 {
            assert!(matches!(p.on_exit(clock.now(), Duration::from_secs(61)), RestartDecision::RestartAfter(_)));
            clock.advance(Duration::from_secs(61));
        }
    }
}
