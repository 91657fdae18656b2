//! The launcher end to end: real service processes, real signals, real sockets.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::Duration;

use common::proto::launcher::v1::ServiceState;
use e2e::{Node, TestConfig, http_get, process_alive};
use nix::sys::signal::Signal;

#[tokio::test]
async fn supervises_restarts_a_killed_service_and_stops_cleanly() {
    let config = TestConfig::new("[logging]\nformat = \"json\"\nfile = \"{dir}/logs/executor.log\"\n");
    let log_file = config.dir.path().join("logs/executor.log");
    let mut node = Node::start(config).await;
    let ports = node.config.ports;
    let status = node.status().await.unwrap();
    let names: Vec<&str> = status.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["container-runtime", "gpu-monitor", "validator-access", "executor-api"]);

    let (code, body) = http_get(ports.health, "/health").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""status":"serving""#), "{body}");

    // kill -9 one service: the launcher restarts it and it serves again.
    let victim = status.services.iter().find(|s| s.name == "gpu-monitor").unwrap().pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let after = node
        .wait_until(Duration::from_secs(10), |s| {
            let gm = s.services.iter().find(|x| x.name == "gpu-monitor").unwrap();
            gm.restarts == 1 && gm.pid != victim && gm.state() == ServiceState::Serving
        })
        .await;
    let gm = after.services.iter().find(|x| x.name == "gpu-monitor").unwrap();
    assert_eq!(gm.last_exit, "signal 9 (SIGKILL)");
    let (code, _) = http_get(ports.health, "/health").await.unwrap();
    assert_eq!(code, 200);
    let (_, metrics) = http_get(ports.launcher_metrics(), "/metrics").await.unwrap();
    assert!(metrics.contains(r#"executor_launcher_restarts_total{service="gpu-monitor"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"executor_launcher_service_up{service="gpu-monitor"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"executor_build_info{service="executor",version="#), "{metrics}");
    // Every service exports its build on its own port.
    for port in &ports.metrics[..4] {
        let (code, text) = http_get(*port, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        assert!(text.contains("executor_build_info{service="), "{text}");
    }

    // SIGTERM: every service stops, nothing is left running, sockets are gone.
    let pids: Vec<u32> = after.services.iter().map(|s| s.pid).collect();
    let runtime_dir = node.config.runtime_dir();
    let (exit, output) = node.stop_with(Signal::SIGTERM, Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}\n{output}");
    for pid in pids {
        assert!(!process_alive(pid), "service pid {pid} outlived the launcher");
    }
    let left: Vec<_> = std::fs::read_dir(&runtime_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "sockets left behind: {left:?}");
    assert!(output.contains("all services SERVING"), "{output}");
    assert!(output.contains(r#"{"service":"gpu-monitor","#), "service output is forwarded: {output}");
    // The launcher wrote its own and every service's lines to the log file, as JSON.
    let logged = std::fs::read_to_string(&log_file).unwrap();
    for service in ["executor", "container-runtime", "gpu-monitor", "validator-access", "executor-api"] {
        assert!(logged.contains(&format!(r#"{{"service":"{service}","#)), "{service} missing from the log file");
    }
    for line in logged.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[tokio::test]
async fn health_endpoint_reports_a_service_that_is_down() {
    // Long backoff so the killed service stays down while we look.
    let mut node = Node::start(TestConfig::new("crash_loop_max_restarts = 3")).await;
    let config = std::fs::read_to_string(&node.config.path).unwrap();
    assert!(config.contains("restart_backoff_initial"));
    let status = node.status().await.unwrap();
    let victim = status.services.iter().find(|s| s.name == "validator-access").unwrap().pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGSTOP).unwrap();
    // A stopped (not dead) service fails its health checks: 503 from /health, then the
    // launcher kills it after `unhealthy_threshold` failures and starts a new one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(node.config.ports.health, "/health").await.unwrap();
        if code == 503 {
            assert!(body.contains(r#""validator-access":"UNREACHABLE"#) || body.contains("validator-access"), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "health never went 503: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = node
        .wait_until(Duration::from_secs(20), |s| {
            let va = s.services.iter().find(|x| x.name == "validator-access").unwrap();
            va.restarts == 1 && va.state() == ServiceState::Serving
        })
        .await;
    let va = after.services.iter().find(|x| x.name == "validator-access").unwrap();
    assert!(va.last_exit.contains("failed health checks"), "{va:?}");
    assert!(!process_alive(victim));
    let (code, _) = http_get(node.config.ports.health, "/health").await.unwrap();
    assert_eq!(code, 200);
    let (exit, output) = node.stop_with(Signal::SIGINT, Duration::from_secs(10)).await;
    assert!(exit.success(), "{output}");
}

#[tokio::test]
async fn a_crash_loop_stops_the_node() {
    let mut node = Node::start(TestConfig::new("crash_loop_max_restarts = 2")).await;
    let mut last_pid = 0;
    for restarts in 0..3u64 {
        let status = node
            .wait_until(Duration::from_secs(10), |s| {
                let cr = s.services.iter().find(|x| x.name == "container-runtime").unwrap();
                cr.restarts == restarts && cr.state() == ServiceState::Serving && cr.pid != last_pid
            })
            .await;
        last_pid = status.services.iter().find(|x| x.name == "container-runtime").unwrap().pid;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(last_pid as i32), Signal::SIGKILL).unwrap();
    }
    let pids: Vec<u32> = vec![node.pid()];
    let (exit, output) = node.wait(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(1), "{output}");
    assert!(output.contains("crash-looping"), "{output}");
    assert!(!process_alive(pids[0]));
}

#[tokio::test]
async fn status_and_sighup_reload() {
    let mut node = Node::start(TestConfig::new("")).await;
    let config = node.config.path.to_str().unwrap().to_owned();
    let out = e2e::run("executor", &["status", "--config", &config], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SERVICE") && text.lines().filter(|l| l.contains(" serving ")).count() == 4, "{text}");
    let pids = |s: &common::proto::launcher::v1::StatusResponse| s.services.iter().map(|x| x.pid).collect::<Vec<_>>();
    let before = pids(&node.status().await.unwrap());

    // An invalid config: SIGHUP names the key, and nothing is restarted.
    let ports = node.config.ports;
    let original = std::fs::read_to_string(&node.config.path).unwrap();
    std::fs::write(&node.config.path, format!("{original}restart_backof = \"1s\"\n")).unwrap();
    common::process::send_signal(node.pid(), Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = node.status().await.unwrap();
    assert!(e2e::all_serving(&status));
    assert_eq!(pids(&status), before, "an invalid config must not restart anything");

    // A valid change (gpu-monitor's and the launcher's metrics ports, the services' log
    // level): the services restart with it, the launcher serves metrics on its new port.
    let (m2, m4) = (e2e::free_port(), e2e::free_port());
    let changed = original
        .replace(&format!("gpu_monitor_port = {}", ports.metrics[2]), &format!("gpu_monitor_port = {m2}"))
        .replace(&format!("launcher_port = {}", ports.metrics[4]), &format!("launcher_port = {m4}"));
    let changed = format!("{changed}\n[logging]\nlevel = \"debug\"\n");
    std::fs::write(&node.config.path, changed).unwrap();
    common::process::send_signal(node.pid(), Signal::SIGHUP).unwrap();
    let after = node
        .wait_until(Duration::from_secs(30), |s| {
            e2e::all_serving(s) && s.services.len() == 4 && s.services.iter().all(|x| !before.contains(&x.pid))
        })
        .await;
    assert_eq!(after.services.len(), 4);
    let (code, text) = http_get(m2, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(text.contains(r#"executor_build_info{service="gpu-monitor""#), "{text}");
    assert!(http_get(ports.metrics[2], "/metrics").await.is_err(), "the old gpu-monitor port still answers");
    let (code, text) = http_get(m4, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(text.contains("executor_launcher_service_up"), "{text}");
    assert!(http_get(ports.metrics[4], "/metrics").await.is_err(), "the old launcher port still answers");
    let (code, _) = http_get(ports.health, "/health").await.unwrap();
    assert_eq!(code, 200);

    let (exit, output) = node.stop_with(Signal::SIGTERM, Duration::from_secs(10)).await;
    assert!(exit.success(), "{output}");
    assert!(output.contains("SIGHUP: config error"), "{output}");
    assert!(output.contains("restart_backof"), "the error names the key: {output}");
    assert!(output.contains("the config was not reloaded"), "{output}");
    assert!(output.contains("SIGHUP: config reloaded; services restarted with it"), "{output}");
    // The services run at debug level after the reload.
    assert!(output.contains("DEBUG") || output.contains(r#""level":"DEBUG""#), "{output}");

    let out = e2e::run("executor", &["status", "--config", &config], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executor is not running"));
}

/// A valid config whose services cannot start (a port taken since) stops the node with the
/// reason, as a failed start does; systemd then restarts it and shows the error.
#[tokio::test]
async fn a_reload_whose_services_cannot_start_stops_the_node() {
    let mut node = Node::start(TestConfig::new("")).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let original = std::fs::read_to_string(&node.config.path).unwrap();
    let moved = original.replace(
        &format!("gpu_monitor_port = {}", node.config.ports.metrics[2]),
        &format!("gpu_monitor_port = {port}"),
    );
    std::fs::write(&node.config.path, moved).unwrap();
    common::process::send_signal(node.pid(), Signal::SIGHUP).unwrap();
    let (exit, output) = node.wait(Duration::from_secs(30)).await;
    assert_eq!(exit.code(), Some(1), "{output}");
    assert!(output.contains("gpu-monitor did not start"), "{output}");
    assert!(output.contains("after reloading"), "{output}");
}

#[tokio::test]
async fn a_missing_service_binary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("executor");
    std::fs::copy(e2e::binary("executor"), &lone).unwrap();
    let config = TestConfig::new("");
    let spec = common::process::ProcessSpec::new(&lone).args(["--server", "--config"]).arg(&config.path);
    let out = spec.output(Duration::from_secs(30), 1 << 20).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("service binary `container-runtime` not found"), "{stderr}");
}
