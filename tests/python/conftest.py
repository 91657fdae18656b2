"""Starts a real executor node (the launcher from target/debug) for the Python client tests."""

import os
import pathlib
import socket
import subprocess
import tempfile
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("EXECUTOR_BIN_DIR_FOR_TESTS", ROOT / "target" / "debug"))
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


def free_ports(n):
    """n distinct free ports: all are held until all are chosen, so none repeats."""
    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


# gRPC C-core (grpcio >= 1.57) sends the percent-encoded socket path as `:authority` on Unix
# sockets, which the h2 crate under tonic rejects as malformed (RST_STREAM PROTOCOL_ERROR, see
# docs/ARCHITECTURE.md). grpc-go, kubernetes and tonic's own client send `localhost`; so do we.
UNIX_OPTIONS = [("grpc.default_authority", "localhost")]


def channel(target):
    return grpc.insecure_channel(target, options=UNIX_OPTIONS if target.startswith("unix:") else [])


def write_config(root, system="enable_gpu_monitoring = false", server_extra="", extra=""):
    """A config in `root` on loopback with free ports; returns (path, ports by key).
    `server_extra` adds keys to `[server]`; `extra` adds tables at the end."""
    root = pathlib.Path(root)
    names = ["grpc", "health", "ssh", "tenant_ssh", "executor_api", "container_runtime", "gpu_monitor", "validator_access", "launcher"]
    ports = dict(zip(names, free_ports(len(names))))
    path = root / "executor.toml"
    path.write_text(
        f"""managing_miner_hotkey = "{ALICE}"
data_dir = "{root / 'data'}"
runtime_dir = "{root / 'run'}"
[server]
host = "127.0.0.1"
port = {ports['grpc']}
health_port = {ports['health']}
{server_extra}
[system]
{system}
[validator]
ssh_port = {ports['ssh']}
[tenant_access]
ssh_port = {ports['tenant_ssh']}
[metrics]
host = "127.0.0.1"
"""
        + "".join(f"{name}_port = {ports[name]}\n" for name in names[4:])
        + extra
    )
    return path, ports


class Node:
    def __init__(self, root, server_extra="", extra=""):
        self.root = pathlib.Path(root)
        self.runtime_dir = self.root / "run"
        self.config, ports = write_config(self.root, server_extra=server_extra, extra=extra)
        self.grpc_port, self.health_port = ports["grpc"], ports["health"]
        self.metrics_port = ports["executor_api"]
        self.log = open(self.root / "executor.log", "wb")
        self.process = subprocess.Popen(
            [str(BIN / "executor"), "--server", "--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def socket(self, name):
        return f"unix:{self.runtime_dir / (name + '.sock')}"

    def channel(self, target):
        """A channel to a TCP address or one of our Unix sockets."""
        return channel(target)

    def wait_serving(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "executor.log").read_text()
            try:
                with channel(self.socket("launcher")) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise AssertionError("executor did not become SERVING")

    def stop(self):
        self.process.terminate()
        code = self.process.wait(timeout=15)
        self.log.close()
        return code


def running_node(**settings):
    """A node started in a fresh directory, serving, stopped cleanly afterwards (a generator
    for fixtures: `yield from running_node(...)`)."""
    with tempfile.TemporaryDirectory() as root:
        n = Node(root, **settings)
        try:
            n.wait_serving()
            yield n
        finally:
            if n.process.poll() is None:
                assert n.stop() == 0


@pytest.fixture(scope="module")
def node():
    yield from running_node()
