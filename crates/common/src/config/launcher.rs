//! `[launcher]`: how the launcher supervises the services (readiness, restarts, crash loops,
//! health checks, shutdown), with its checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::human_duration;

/// `[launcher]`: supervision of the services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LauncherConfig {
    /// How long a service may take to report SERVING after it starts.
    #[serde(with = "human_duration")]
    pub ready_timeout: Duration,
    /// First delay before restarting a crashed service; doubles on each crash.
    #[serde(with = "human_duration")]
    pub restart_backoff_initial: Duration,
    /// Longest delay between restarts.
    #[serde(with = "human_duration")]
    pub restart_backoff_max: Duration,
    /// Restarts of one service within `crash_loop_window` after which the launcher gives up
    /// and stops the node (exit code 1, so systemd or Docker can take over).
    pub crash_loop_max_restarts: u32,
    /// Window for counting restarts; a service that stays up this long has its backoff reset.
    #[serde(with = "human_duration")]
    pub crash_loop_window: Duration,
    /// How often each service's gRPC health is checked.
    #[serde(with = "human_duration")]
    pub health_check_interval: Duration,
    /// Consecutive failed health checks after which a running service is killed and restarted.
    pub unhealthy_threshold: u32,
    /// On SIGTERM/SIGINT, how long services get to exit before they are killed.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            ready_timeout: Duration::from_secs(30),
            restart_backoff_initial: Duration::from_millis(500),
            restart_backoff_max: Duration::from_secs(30),
            crash_loop_max_restarts: 5,
            crash_loop_window: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(2),
            unhealthy_threshold: 3,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl LauncherConfig {
    pub(super) fn validate(&self, v: &mut Issues) {
        for (key, value) in [
            ("launcher.ready_timeout", self.ready_timeout),
            ("launcher.restart_backoff_initial", self.restart_backoff_initial),
            ("launcher.crash_loop_window", self.crash_loop_window),
            ("launcher.health_check_interval", self.health_check_interval),
            ("launcher.shutdown_timeout", self.shutdown_timeout),
        ] {
            if value.is_zero() {
                v.fail(key, "must be longer than 0s");
            }
        }
        if self.restart_backoff_max < self.restart_backoff_initial {
            v.fail("launcher.restart_backoff_max", "must not be shorter than restart_backoff_initial");
        }
        v.range("launcher.crash_loop_max_restarts", self.crash_loop_max_restarts as f64, 1.0, 1000.0);
        v.range("launcher.unhealthy_threshold", self.unhealthy_threshold as f64, 1.0, 1000.0);
    }
}
