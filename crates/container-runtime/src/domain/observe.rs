//! Looking into a container of ours: its logs (stdout and stderr apart, with Docker's
//! timestamps), a stats sample, and a command run inside it with a deadline and an output cap
//! (killed at the deadline).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::{LogsOptions, StatsOptions};
use common::proto::runtime::v1 as pb;
use tokio_stream::{Stream, StreamExt};

use super::cutoff::ExecProcesses;
use super::{Runtime, RuntimeError};
use crate::engine::EngineError;

/// Longest an exec may run, and the most output it returns per stream, when the request says 0.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const EXEC_MAX_OUTPUT: u64 = 1 << 20;
/// The most output an exec may ask for per stream.
const EXEC_MAX_OUTPUT_CAP: u64 = 64 << 20;

/// A container's log, chunk by chunk.
pub type LogChunks = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, RuntimeError>> + Send>>;

impl Runtime {
    /// The log of a container of ours: the last `tail` lines (0: all) since Unix time `since`,
    /// then what follows when `follow`.
    pub async fn logs(&self, r: pb::LogsRequest) -> Result<LogChunks, RuntimeError> {
        self.ours(&r.id).await?;
        let options = LogsOptions {
            follow: r.follow,
            stdout: true,
            stderr: true,
            since: i32::try_from(r.since).map_err(|_| RuntimeError::SinceOutOfRange)?,
            timestamps: true,
            tail: if r.tail == 0 { "all".to_owned() } else { r.tail.to_string() },
            ..LogsOptions::default()
        };
        let id = r.id.clone();
        let stream = self.engine.docker().logs(&r.id, Some(options)).map(move |item| {
            let output = item.map_err(|source| EngineError::Docker { id: id.clone(), source })?;
            let (stream, bytes) = match output {
                LogOutput::StdOut { message } => (pb::LogStream::Stdout, message),
                LogOutput::StdErr { message } => (pb::LogStream::Stderr, message),
                LogOutput::Console { message } | LogOutput::StdIn { message } => (pb::LogStream::Stdout, message),
            };
            // With timestamps Docker starts each line with its RFC 3339 time and a space.
            let (timestamp, data) = match bytes.iter().position(|&b| b == b' ') {
                Some(i) => (String::from_utf8_lossy(&bytes[..i]).into_owned(), bytes[i + 1..].to_vec()),
                None => (String::new(), bytes.to_vec()),
            };
            Ok(pb::LogChunk { stream: stream as i32, data, timestamp })
        });
        Ok(Box::pin(stream))
    }

    /// One stats sample of a container of ours.
    pub async fn stats(&self, id: &str) -> Result<pb::ContainerStats, RuntimeError> {
        let inspect = self.ours(id).await?;
        let options = StatsOptions { stream: false, one_shot: false };
        let stats = self
            .engine
            .docker()
            .stats(id, Some(options))
            .next()
            .await
            .ok_or_else(|| RuntimeError::NoStats { id: id.to_owned() })?
            .map_err(|source| EngineError::Docker { id: id.to_owned(), source })?;
        let mut out = crate::status::stats(id.to_owned(), &stats);
        // The engine counts the traffic of a container's own endpoints only: one that joins a
        // holder's namespace is counted from the namespace.
        if crate::holder::joined(&inspect)
            && let Some((rx, tx)) =
                super::attach::running_pid(id, &inspect).ok().and_then(crate::holder::namespace_bytes)
        {
            (out.network_rx_bytes, out.network_tx_bytes) = (rx, tx);
        }
        let (used, limit) = self.engine.writable_layer(id).await?;
        out.writable_layer_bytes = used.unwrap_or(0);
        out.writable_layer_limit_bytes = limit.unwrap_or(self.config.resource_limits.writable_layer_bytes.get());
        let labels = inspect.config.as_ref().and_then(|c| c.labels.as_ref());
        let attached = labels.and_then(|l| l.get(crate::volumes::LABEL_VOLUMES)).map_or("", String::as_str);
        out.volumes = crate::volumes::parse_label(attached)
            .into_iter()
            .map(|a| {
                let (size_bytes, used_bytes) = self.volumes().usage(&a.volume);
                pb::VolumeUsage { volume: a.volume, container_path: a.container_path, size_bytes, used_bytes }
            })
            .collect();
        Ok(out)
    }

    /// Runs `r.command` in a container of ours: its exit code and output, cut at the cap and
    /// at the deadline (both said in the response). At the deadline, or when the caller goes
    /// before the end, the command's processes are killed.
    pub async fn exec(&self, r: pb::ExecRequest) -> Result<pb::ExecResponse, RuntimeError> {
        let inspect = self.ours(&r.id).await?;
        // Without a PID the container is not running, and the engine refuses the exec.
        let container_pid = inspect.state.as_ref().and_then(|s| s.pid).and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        if r.command.is_empty() {
            return Err(RuntimeError::EmptyCommand);
        }
        let timeout = if r.timeout_seconds == 0 { EXEC_TIMEOUT } else { Duration::from_secs(r.timeout_seconds.into()) };
        let cap = if r.max_output_bytes == 0 { EXEC_MAX_OUTPUT } else { r.max_output_bytes.min(EXEC_MAX_OUTPUT_CAP) }
            as usize;
        let docker = self.engine.docker();
        let map = |source| RuntimeError::Engine(EngineError::Docker { id: r.id.clone(), source });
        let exec = docker
            .create_exec(
                &r.id,
                bollard::models::ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(r.command.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(map)?;
        let mut processes = ExecProcesses::new(docker.clone(), exec.id.clone(), container_pid);
        let mut out = pb::ExecResponse::default();
        let mut buffers: BTreeMap<bool, Vec<u8>> = BTreeMap::new();
        if let bollard::exec::StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&exec.id, None).await.map_err(map)?
        {
            let collect = async {
                while let Some(item) = output.next().await {
                    let (is_err, bytes) = match item.map_err(map)? {
                        LogOutput::StdErr { message } => (true, message),
                        other => (false, other.into_bytes()),
                    };
                    let buf = buffers.entry(is_err).or_default();
                    let room = cap.saturating_sub(buf.len());
                    out.truncated |= bytes.len() > room;
                    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                Ok::<(), RuntimeError>(())
            };
            match tokio::time::timeout(timeout, collect).await {
                Ok(result) => result?,
                Err(_) => {
                    out.timed_out = true;
                    processes.cut_off().await;
                }
            }
        }
        processes.release();
        out.stdout = buffers.remove(&false).unwrap_or_default();
        out.stderr = buffers.remove(&true).unwrap_or_default();
        let inspect = docker.inspect_exec(&exec.id).await.map_err(map)?;
        out.exit_code = inspect.exit_code.unwrap_or(-1);
        Ok(out)
    }
}
