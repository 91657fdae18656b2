"""The public doors against strangers (issue 17, items 8, 11 and 12), with a real node and
independent clients: plain sockets held idle or fed half a request, and the real
`executor ctl` as the miner. Every address of 127.0.0.0/8 is local, so binding a socket to
127.0.0.2 before connecting makes it another peer."""

import hashlib
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import tempfile
import time

import grpc
import pytest
from conftest import ALICE, BIN, Node, running_node
from test_public_api import ALICE as ALICE_KEY
from test_public_api import SERVICE, Api, health_check, metric, refused, service_pids, sign

ALICE_SEED = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a"


def connect_from(source, port):
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(30)
    return s


def hold_idle(port, source, count):
    """`count` connections from `source` to the gRPC port, held idle without a byte sent; returns
    those the server took (it sends its HTTP/2 SETTINGS at once, and closes a refused one)."""
    held = []
    for _ in range(count):
        s = connect_from(source, port)
        try:
            first = s.recv(9)
        except OSError:
            first = b""
        if first:
            held.append(s)
        else:
            s.close()
    return held


def closed(s):
    """Whether the server closes `s` (what it sent before is read and dropped)."""
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def ctl(node, *args):
    return subprocess.run(
        [str(BIN / "executor"), "ctl", "--endpoint", f"http://127.0.0.1:{node.grpc_port}", *args],
        capture_output=True, text=True, timeout=60, env={"MINER_HOTKEY_SECRET": ALICE_SEED},
    )


@pytest.fixture(scope="module")
def capped_node():
    """A node taking 64 connections."""
    yield from running_node(server_extra="max_connections = 64")


def test_idle_sockets_from_one_address_leave_room_for_the_miner(capped_node):
    held = hold_idle(capped_node.grpc_port, "127.0.0.2", 64)
    try:
        out = ctl(capped_node, "identity")
        assert out.returncode == 0, f"executor ctl identity failed while 127.0.0.2 held {len(held)} connections: {out.stderr}"
        assert json.loads(out.stdout)["managing_miner_hotkey"] == ALICE
        assert len(held) == 32, f"127.0.0.2 holds {len(held)} connections; max_connections_per_ip is 32"
        refused = 'executor_api_connections_refused_total{limit="max_connections_per_ip"}'
        assert metric(capped_node.metrics_port, refused) == 32
    finally:
        for s in held:
            s.close()


@pytest.fixture(scope="module")
def two_slot_node():
    """A node taking 2 connections, both from one address if need be."""
    yield from running_node(server_extra="max_connections = 2\nmax_connections_per_ip = 2")


def wait_for(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_strangers_make_room_and_authenticated_connections_keep_theirs(two_slot_node):
    node = two_slot_node
    open_connections = lambda: metric(node.metrics_port, "executor_api_connections ")  # noqa: E731
    wait_for(lambda: open_connections() == 0)
    # Two idle strangers hold both slots: a newcomer from another address takes the oldest one's.
    strangers = hold_idle(node.grpc_port, "127.0.0.2", 2)
    assert len(strangers) == 2
    assert health_check(node.grpc_port) == 1
    assert closed(strangers[0]), "the oldest stranger was not closed"
    for s in strangers:
        s.close()
    # Two connections that made a signed call hold both slots: a third is closed at once, from
    # another address (the global cap) or from theirs (the per-address cap).
    options = [("grpc.use_local_subchannel_pool", 1)]
    miners = [grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}", options=options) for _ in range(2)]
    try:
        for channel in miners:
            Api(channel).call("Identity")
        wait_for(lambda: open_connections() == 2)
        extra = connect_from("127.0.0.2", node.grpc_port)
        assert extra.recv(1) == b""
        extra.close()
        with pytest.raises(grpc.RpcError) as info:
            health_check(node.grpc_port)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in miners:
            channel.close()
    wait_for(lambda: open_connections() == 0)
    assert health_check(node.grpc_port) == 1
    assert metric(node.metrics_port, 'executor_api_connections_refused_total{limit="max_connections"}') == 1
    assert metric(node.metrics_port, 'executor_api_connections_closed_total{reason="evicted"}') >= 1


def test_a_tls_handshake_that_does_not_finish_is_closed():
    """`handshake_timeout` covers the TLS handshake: silence, or half a ClientHello, is closed;
    a real TLS client is served."""
    with tempfile.TemporaryDirectory() as root:
        root = pathlib.Path(root)
        cert, key = root / "cert.pem", root / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        n = Node(root, server_extra=f'tls_cert_path = "{cert}"\ntls_key_path = "{key}"\nhandshake_timeout = "1s"')
        try:
            n.wait_serving()
            # A TLS record header announcing a ClientHello that never comes.
            for sent in [b"", b"\x16\x03\x01\x02\x00\x01"]:
                s = connect_from("127.0.0.2", n.grpc_port)
                s.sendall(sent)
                assert closed(s), f"a TLS connection that sent {sent!r} was still open after 30 s"
                s.close()
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            with grpc.secure_channel(f"localhost:{n.grpc_port}", credentials) as channel:
                assert Api(channel).call("Identity").managing_miner_hotkey == ALICE
            assert metric(n.metrics_port, 'executor_api_connections_closed_total{reason="handshake_timeout"}') == 2
        finally:
            if n.process.poll() is None:
                assert n.stop() == 0


def public_port_serves(port):
    try:
        return health_check(port) == 1
    except grpc.RpcError:
        return False


def test_a_call_signed_before_a_restart_is_refused_after_it():
    """The nonce cache is in memory: a call captured before executor-api restarts must not be
    accepted again after it, though its timestamp is still within the window."""
    for n in running_node():
        with grpc.insecure_channel(f"127.0.0.1:{n.grpc_port}") as channel:
            api = Api(channel)
            request = api.message("Identity")
            captured = sign(ALICE_KEY, api.executor_id, "Identity", request)
            api.call("Identity", request, captured)
        signed_at = int(dict(captured)["x-executor-timestamp"])
        wait_for(lambda: int(time.time()) > signed_at)
        pid = service_pids(n)["executor-api"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: service_pids(n).get("executor-api", pid) not in (pid, 0), timeout=30)
        wait_for(lambda: public_port_serves(n.grpc_port), timeout=30)
        with grpc.insecure_channel(f"127.0.0.1:{n.grpc_port}") as channel:
            replay = lambda: Api(channel).call("Identity", request, captured)  # noqa: E731
            try:
                replay()
            except grpc.RpcError:
                pass
            else:
                raise AssertionError("the captured call was answered again after executor-api restarted")
            refused(replay, grpc.StatusCode.UNAUTHENTICATED, "stale_timestamp")


def test_calls_are_bound_to_one_executor_and_the_first_scheme_is_told_what_changed(capped_node):
    with grpc.insecure_channel(f"127.0.0.1:{capped_node.grpc_port}") as channel:
        api = Api(channel)
        assert api.executor_id.startswith("executor-")
        request = api.message("Identity")
        # Signed for another executor of the same miner.
        elsewhere = sign(ALICE_KEY, "executor-other", "Identity", request)
        refused(lambda: api.call("Identity", request, elsewhere), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
        # The first scheme: no `x-executor-auth`, no executor id in the signed string.
        timestamp, nonce = int(time.time()), secrets.token_hex(16)
        digest = hashlib.sha256(request.SerializeToString()).hexdigest()
        v1 = f"basilica-executor-api-v1\n/{SERVICE}/Identity\n{timestamp}\n{nonce}\n{digest}"
        metadata = [
            ("x-executor-hotkey", ALICE_KEY.ss58_address),
            ("x-executor-timestamp", str(timestamp)),
            ("x-executor-nonce", nonce),
            ("x-executor-signature", ALICE_KEY.sign(v1.encode()).hex()),
        ]
        with pytest.raises(grpc.RpcError) as info:
            api.call("Identity", request, metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details = info.value.details()
        assert details.startswith("unsupported_scheme: ") and "x-executor-auth: v2" in details and "docs/api.md" in details, details


def test_ctl_signs_for_the_pinned_executor_only(capped_node):
    identity = json.loads(ctl(capped_node, "identity").stdout)
    out = ctl(capped_node, "--executor-id", identity["executor_id"], "identity")
    assert out.returncode == 0, out.stderr
    out = ctl(capped_node, "--executor-id", "executor-other", "identity")
    assert out.returncode == 1, out
    assert f"is {identity['executor_id']}, not the executor executor-other" in out.stderr, out.stderr


def http_answered(s, path="/livez"):
    """Whether a request on `s` is answered (a refused connection is closed unanswered)."""
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return s.recv(12).startswith(b"HTTP/1.1 200")
    except (ConnectionResetError, BrokenPipeError):
        return False


def test_http_ports_close_slow_headers_and_cap_each_address(capped_node):
    """The health port and a metrics port: half a request header, or nothing, is closed after
    the header deadline (10 s); one address gets 16 connections, the others are closed at once
    while another address is served."""
    ports = {"health": capped_node.health_port, "metrics": capped_node.metrics_port}
    slow = []
    for name, port in ports.items():
        half = connect_from("127.0.0.2", port)
        half.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow += [(name, "half a header", half), (name, "nothing", connect_from("127.0.0.2", port))]
    for name, sent, s in slow:
        assert closed(s), f"a connection to the {name} port that sent {sent} was still open after 30 s"
        s.close()
    for name, port in ports.items():
        path = "/livez" if name == "health" else "/metrics"
        held = [connect_from("127.0.0.3", port) for _ in range(20)]
        try:
            answered = sum(http_answered(s, path) for s in held)
            assert answered == 16, f"{answered} of 20 connections from 127.0.0.3 to the {name} port were served; one address may hold 16"
            other = connect_from("127.0.0.4", port)
            assert http_answered(other, path), f"the {name} port did not serve 127.0.0.4"
            other.close()
        finally:
            for s in held:
                s.close()
