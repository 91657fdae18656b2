//! How one collector did in one round: written by the `collector`, read by the `exporter` (its
//! `success` and `duration_seconds` series) and the collector's log line.

use std::time::Duration;

/// The collectors, as named in `executor_gpu_monitor_collector_*{collector}`.
pub const COLLECTORS: [&str; 4] = ["gpu", "processes", "kernel", "host"];

/// How one collector did this round.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorRun {
    pub name: &'static str,
    pub success: bool,
    pub duration: Duration,
    /// Why it failed, as logged.
    pub error: Option<String>,
}
