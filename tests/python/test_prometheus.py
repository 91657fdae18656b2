"""A real Prometheus server (the distribution's package) scrapes gpu-monitor, which runs on
scripted GPUs: the target is up and the executor_gpu_* and executor_host_* series arrive with
their labels."""

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, free_ports, write_config

UUID = "GPU-11111111-2222-3333-4444-555555555555"


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s; last: {last}")


@pytest.fixture
def monitored():
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed; `make test` installs it")
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        (root / "gpus.json").write_text(json.dumps({"gpus": [{
            "uuid": UUID, "name": "Simulated H100", "pci_bus_id": "00000000:17:00.0",
            "memory_total_bytes": 80 << 30, "memory_used_bytes": 12 << 30, "temperature_celsius": 55}]}))
        config, ports = write_config(root, f"""gpu_backend = "simulated"
simulated_gpus_file = "{root / 'gpus.json'}"
update_interval = "500ms"
collector_timeout = "400ms"
""")
        m2, prom = ports["gpu_monitor"], free_ports(1)[0]
        (root / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: executor-gpu-monitor
    static_configs:
      - targets: ["127.0.0.1:{m2}"]
""")
        check = subprocess.run(["promtool", "check", "config", str(root / "prometheus.yml")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        monitor = subprocess.Popen([str(BIN / "gpu-monitor"), "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = subprocess.Popen(["prometheus", f"--config.file={root / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield f"http://127.0.0.1:{prom}", m2
        finally:
            for p in (server, monitor):
                p.terminate()
                p.wait(timeout=15)


def test_prometheus_scrapes_gpu_monitor(monitored):
    base, port = monitored

    def target_up():
        targets = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
        return targets and targets[0]["health"] == "up" and targets[0]

    target = wait(target_up, 60, "target up")
    assert target["labels"]["job"] == "executor-gpu-monitor"

    def series(query):
        result = get_json(f"{base}/api/v1/query?query={query}")["data"]["result"]
        return result or None

    used = wait(lambda: series("executor_gpu_memory_used_bytes"), 30, "GPU series")
    assert used[0]["metric"]["uuid"] == UUID
    assert used[0]["metric"]["model"] == "Simulated H100"
    assert used[0]["metric"]["gpu"] == "0"
    assert float(used[0]["value"][1]) == 12 << 30
    assert wait(lambda: series("executor_host_memory_used_bytes"), 30, "host series")
    success = wait(lambda: series('executor_gpu_monitor_collector_success{collector="gpu"}'), 30, "collector series")
    assert float(success[0]["value"][1]) == 1.0
    # promtool agrees that our exposition is well-formed.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read()
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
