//! Audit logs: one JSON object per line, appended and synced to disk before the action it
//! records goes on, rotated by size (`<service>.jsonl` → `<service>.jsonl.1` …), one file per
//! service under `data_dir/audit/`. Never key material or signatures.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::ServiceName;
use crate::telemetry::RotatingFile;

/// Rotation: this size per file, this many old files kept.
pub const MAX_BYTES: u64 = 64 << 20;
pub const MAX_FILES: u32 = 10;

/// The audit log of one service.
#[derive(Debug)]
pub struct Audit {
    file: RotatingFile,
    /// `executor_<service>_audit_events_total`.
    metric: String,
}

impl Audit {
    /// `data_dir/audit/<service>.jsonl`.
    pub fn open(data_dir: &Path, service: ServiceName) -> Result<Self, crate::telemetry::TelemetryError> {
        let name = service.as_str();
        let file = RotatingFile::open(&data_dir.join("audit").join(format!("{name}.jsonl")), MAX_BYTES, MAX_FILES)?;
        let metric = format!("executor_{}_audit_events_total", name.replace('-', "_"));
        metrics::describe_counter!(metric.clone(), "Audit log events, by event.");
        Ok(Self { file, metric })
    }

    /// Writes one event: `{"ts": <unix ms>, "event": event, ...fields}`. A failure to write is
    /// logged loudly; the service goes on (refusing work because the disk is full would lock
    /// validators and tenants out of a node that otherwise works).
    pub fn record(&self, event: &str, fields: Value) {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let mut line = Map::new();
        line.insert("ts".into(), json!(ts as u64));
        line.insert("event".into(), json!(event));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let mut bytes = Value::Object(line).to_string().into_bytes();
        bytes.push(b'\n');
        metrics::counter!(self.metric.clone(), "event" => event.to_owned()).increment(1);
        if let Err(e) = self.file.append_durable(&bytes) {
            tracing::error!(error = %e, event, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_are_json_lines_in_the_service_file() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), ServiceName::ValidatorAccess).unwrap();
        assert_eq!(audit.metric, "executor_validator_access_audit_events_total");
        audit.record("grant", json!({"grant_id": "g-1", "hotkey": "5Grw"}));
        audit.record("disconnect", json!({"reason": "grant_revoked"}));
        let text = std::fs::read_to_string(dir.path().join("audit/validator-access.jsonl")).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "grant");
        assert_eq!(lines[0]["grant_id"], "g-1");
        assert_eq!(lines[1]["reason"], "grant_revoked");
    }
}
