"""The public API with an independent client: grpcio, descriptors from server reflection only
(no .proto files), requests signed with a real Bittensor keypair (`bittensor-wallet`).

Covers what docs/api.md promises: signed calls work, alone (scheme v2) or in a signed session
(scheme v3, implemented here from the document with `cryptography`: X25519, HKDF-SHA256,
HMAC-SHA256, ed25519); unsigned, foreign, stale, replayed and tampered ones are refused with
their reason codes, streaming calls included; the rate limit holds; TLS works; `GET /health`
follows services going down and back. The connection caps and deadlines: test_doors.py."""

import hashlib
import hmac
import json
import pathlib
import secrets
import signal
import subprocess
import tempfile
import time

import grpc
import pytest
from bittensor_wallet import Keypair
from conftest import Node, running_node
from conftest import channel as open_channel
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")
SERVICE = "executor.api.v1.ExecutorApi"


def sign(keypair, executor_id, method, request, timestamp=None, nonce=None):
    """The five metadata entries of docs/api.md for `request` sent to `method` of the executor
    `executor_id`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_hex(16)
    digest = hashlib.sha256(request.SerializeToString()).hexdigest()
    canonical = f"basilica-executor-api-v2\n{executor_id}\n/{SERVICE}/{method}\n{timestamp}\n{nonce}\n{digest}"
    return [
        ("x-executor-auth", "v2"),
        ("x-executor-hotkey", keypair.ss58_address),
        ("x-executor-timestamp", str(timestamp)),
        ("x-executor-nonce", nonce),
        ("x-executor-signature", keypair.sign(canonical.encode()).hex()),
    ]


def executor_id(channel):
    """The id every answer names (`x-executor-id`), here from the open health check."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, call = health_pb2_grpc.HealthStub(channel).Check.with_call(health_pb2.HealthCheckRequest(), timeout=10)
    return dict(call.initial_metadata())["x-executor-id"]


def executor_id_of(public_key):
    """The id an ed25519 identity key gives (docs/api.md)."""
    return "executor-" + hashlib.sha256(b"basilica/executor-id/v1" + public_key).digest()[:16].hex()


class Session:
    """A signed session (scheme v3 of docs/api.md) opened by `keypair` with `api`'s executor."""

    def __init__(self, api, keypair=ALICE):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        secret = X25519PrivateKey.generate()
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        client_key = secret.public_key().public_bytes(*raw)
        answer = api.call("OpenSession", api.message("OpenSession", client_key=client_key), keypair=keypair, session=False)
        self.answer = answer
        # The executor is who its id says: the id derives from the key that signed the answer.
        assert executor_id_of(answer.public_key) == api.executor_id, answer
        lines = [api.executor_id, keypair.ss58_address, answer.session_id]
        transcript = "\n".join(["basilica-executor-session-v1", *lines, client_key.hex(), answer.executor_key.hex(), str(answer.expires_at)])
        Ed25519PublicKey.from_public_bytes(answer.public_key).verify(answer.signature, transcript.encode())
        shared = secret.exchange(X25519PublicKey.from_public_bytes(answer.executor_key))
        info = "\n".join(["basilica-executor-session-v1", *lines]).encode()
        self.key = HKDF(hashes.SHA256(), 32, salt=client_key + answer.executor_key, info=info).derive(shared)
        self.id = answer.session_id
        self.executor_id = api.executor_id
        self.counter = 0

    def headers(self, method, request, counter=None):
        """The four metadata entries of a call in this session (the next counter by default)."""
        if counter is None:
            self.counter += 1
            counter = self.counter
        digest = hashlib.sha256(request.SerializeToString()).hexdigest()
        canonical = f"basilica-executor-api-v3\n{self.executor_id}\n{self.id}\n/{SERVICE}/{method}\n{counter}\n{digest}"
        mac = hmac.new(self.key, canonical.encode(), hashlib.sha256).hexdigest()
        return [("x-executor-auth", "v3"), ("x-executor-session", self.id), ("x-executor-counter", str(counter)), ("x-executor-mac", mac)]


class Api:
    """ExecutorApi from reflection alone, for the executor on the other end: //Alice's calls in
    a signed session (opened with the first one), or each signed on its own (`sessions=False`,
    or another keypair)."""

    def __init__(self, channel, sessions=True):
        self.channel = channel
        self.executor_id = executor_id(channel)
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        self.service = self.pool.FindServiceByName(SERVICE)
        self.sessions = sessions
        self.session = None

    def message(self, method, **fields):
        return message_factory.GetMessageClass(self.service.FindMethodByName(method).input_type)(**fields)

    def stub(self, method):
        m = self.service.FindMethodByName(method)
        response = message_factory.GetMessageClass(m.output_type)
        kind = self.channel.unary_stream if m.server_streaming else self.channel.unary_unary
        return kind(f"/{SERVICE}/{method}", request_serializer=lambda r: r.SerializeToString(), response_deserializer=response.FromString)

    def call(self, method, request=None, metadata=None, keypair=ALICE, session=None):
        request = request if request is not None else self.message(method)
        if metadata is None:
            if (self.sessions if session is None else session) and keypair is ALICE:
                if self.session is None:
                    self.session = Session(self, keypair)
                metadata = self.session.headers(method, request)
            else:
                metadata = sign(keypair, self.executor_id, method, request)
        return self.stub(method)(request, metadata=metadata, timeout=10)


def refused(call, code, reason):
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        # A streaming call fails on the first read.
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    assert info.value.code() == code, info.value
    assert info.value.details().startswith(reason + ":"), info.value.details()


@pytest.fixture(scope="module")
def api(node):
    with open_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        yield Api(channel)


def test_signed_calls_with_a_bittensor_keypair(api):
    identity = api.call("Identity")
    assert identity.managing_miner_hotkey == ALICE.ss58_address
    assert len(identity.public_key) == 32 and identity.executor_id
    assert identity.endpoints.advertised_port > 0
    health = api.call("DetailedHealth")
    assert health.healthy, health
    listed = api.call("ListContainers", api.message("ListContainers", all=True))
    assert listed is not None


def test_calls_in_a_signed_session(api):
    """Scheme v3 from this independent implementation: the session's calls are answered, once
    each, in any order within the window; a replay, a wrong MAC, an unknown session and a bad
    client key are refused with their reasons; the per-call signature works beside it."""
    session = Session(api)
    assert session.answer.counter_window == 1024 and session.answer.expires_at > time.time() + 3000
    identity = api.message("Identity")
    for counter in (2, 1, 3):
        answer = api.call("Identity", identity, metadata=session.headers("Identity", identity, counter))
        assert answer.managing_miner_hotkey == ALICE.ss58_address
    refused(lambda: api.call("Identity", identity, metadata=session.headers("Identity", identity, 2)), grpc.StatusCode.UNAUTHENTICATED, "replayed_counter")
    forged = session.headers("Identity", identity, 4)
    forged[3] = ("x-executor-mac", "00" * 32)
    refused(lambda: api.call("Identity", identity, metadata=forged), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
    # The MAC covers the method: moved to another one, it fails.
    moved = session.headers("Identity", identity, 5)
    refused(lambda: api.call("DetailedHealth", api.message("DetailedHealth"), metadata=moved), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
    gone = session.headers("Identity", identity, 6)
    gone[1] = ("x-executor-session", "0" * 32)
    refused(lambda: api.call("Identity", identity, metadata=gone), grpc.StatusCode.UNAUTHENTICATED, "unknown_session")
    # A streaming call in the session.
    stream = api.call("WatchEvents", api.message("WatchEvents", after_seq=0), metadata=session.headers("WatchEvents", api.message("WatchEvents", after_seq=0)))
    stream.cancel()
    with pytest.raises(grpc.RpcError) as info:
        api.call("OpenSession", api.message("OpenSession", client_key=b"short"), session=False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith("client_key: 5 bytes"), info.value
    assert api.call("Identity", session=False).managing_miner_hotkey == ALICE.ss58_address


def test_the_guides_health_name_through_reflection(api):
    service = api.pool.FindServiceByName("health.v1.Health")
    method = service.FindMethodByName("Check")
    request = message_factory.GetMessageClass(method.input_type)()
    response_class = message_factory.GetMessageClass(method.output_type)
    check = api.channel.unary_unary(
        "/health.v1.Health/Check",
        request_serializer=lambda r: r.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    reply = check(request, timeout=5)
    assert reply.status == method.output_type.fields_by_name["status"].enum_type.values_by_name["SERVING"].number


def test_refusals_carry_their_reason(api):
    U, P = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    refused(lambda: api.call("Identity", metadata=[]), U, "missing_signature")
    refused(lambda: api.call("Identity", keypair=BOB), P, "hotkey_not_allowed")
    request = api.message("Identity")
    stale = sign(ALICE, api.executor_id, "Identity", request, timestamp=int(time.time()) - 3600)
    refused(lambda: api.call("Identity", request, stale), U, "stale_timestamp")
    # The same signed metadata twice: the second is a replay.
    once = sign(ALICE, api.executor_id, "Identity", request)
    api.call("Identity", request, once)
    refused(lambda: api.call("Identity", request, once), U, "replayed_nonce")
    # Signed for one body, sent with another.
    signed_for = api.message("GetContainer", id="c-000000000001")
    sent = api.message("GetContainer", id="c-000000000002")
    refused(lambda: api.call("GetContainer", sent, sign(ALICE, api.executor_id, "GetContainer", signed_for)), U, "bad_signature")
    # Signed for another method.
    metadata = sign(ALICE, api.executor_id, "GetContainer", signed_for)
    refused(lambda: api.call("RemoveContainer", api.message("RemoveContainer", id="c-000000000001"), metadata), U, "bad_signature")
    # A streaming call without auth fails before anything is streamed.
    logs = api.message("StreamLogs", id="c-000000000001", follow=True)
    refused(lambda: api.call("StreamLogs", logs, metadata=[]), U, "missing_signature")
    # ... and with it, it reaches container-runtime (which knows no such container).
    assert stream_code(lambda: api.call("StreamLogs", logs)) == grpc.StatusCode.NOT_FOUND
    # ExecContainer streams too: refused unsigned, and signed it reaches container-runtime's Attach.
    exec_request = api.message("ExecContainer", id="c-000000000001", command=["true"], timeout_seconds=5)
    refused(lambda: api.call("ExecContainer", exec_request, metadata=[]), U, "missing_signature")
    assert stream_code(lambda: api.call("ExecContainer", exec_request)) == grpc.StatusCode.NOT_FOUND


def stream_code(call):
    """The status code a streaming call ends with once read to its end (None: OK)."""
    try:
        list(call())
    except grpc.RpcError as e:
        return e.code()
    return None


def metric(port, prefix):
    with urlopen_text(port, "/metrics") as text:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


class urlopen_text:
    def __init__(self, port, path):
        import urllib.request

        self.text = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()

    def __enter__(self):
        return self.text

    def __exit__(self, *exc):
        return False


def test_refusals_are_counted_by_reason(node, api):
    before = metric(node.metrics_port, 'executor_api_auth_failures_total{reason="stale_timestamp"}')
    request = api.message("Identity")
    stale = sign(ALICE, api.executor_id, "Identity", request, timestamp=int(time.time()) + 3600)
    refused(lambda: api.call("Identity", request, stale), grpc.StatusCode.UNAUTHENTICATED, "stale_timestamp")
    assert metric(node.metrics_port, 'executor_api_auth_failures_total{reason="stale_timestamp"}') == before + 1
    assert metric(node.metrics_port, 'executor_api_requests_total{method="/executor.api.v1.ExecutorApi/Identity",code="OK"}') >= 1


@pytest.fixture(scope="module")
def small_node():
    """A node allowing 5 calls a minute."""
    yield from running_node(extra="[validator.access_config.rate_limits]\napi_requests_per_minute = 5\n")


def health_check(port):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_more_than_the_rate_limit_is_refused(small_node):
    with open_channel(f"127.0.0.1:{small_node.grpc_port}") as channel:
        api = Api(channel, sessions=False)
        for _ in range(5):
            api.call("Identity")
        refused(lambda: api.call("Identity"), grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
        # Health stays open to anyone.
        assert health_check(small_node.grpc_port) == 1


def test_tls_with_certificate_and_key_paths():
    with tempfile.TemporaryDirectory() as root:
        root = pathlib.Path(root)
        cert, key = root / "cert.pem", root / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        n = Node(root, server_extra=f'tls_cert_path = "{cert}"\ntls_key_path = "{key}"\nadvertised_tls = true')
        try:
            n.wait_serving()
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            with grpc.secure_channel(f"localhost:{n.grpc_port}", credentials) as channel:
                identity = Api(channel).call("Identity")
                assert identity.endpoints.advertised_tls
                assert identity.endpoints.grpc_endpoint.startswith("https://")
            with pytest.raises(grpc.RpcError):
                health_check(n.grpc_port)
        finally:
            if n.process.poll() is None:
                assert n.stop() == 0


def curl_health(port):
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/health"], capture_output=True, text=True, timeout=10
    )
    body, code = out.stdout.rsplit("\n", 1)
    return int(code), json.loads(body)


def service_pids(node):
    return {s.name: s.pid for s in service_statuses(node)}


def service_statuses(node):
    """The launcher's `Status` of each service (pid, state, restarts)."""
    from test_grpc_clients import SERVICES  # noqa: F401 (the same node layout)

    with open_channel(node.socket("launcher")) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("executor.launcher.v1.Launcher").FindMethodByName("Status")
        request = message_factory.GetMessageClass(method.input_type)()
        response = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/executor.launcher.v1.Launcher/Status",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return list(call(request, timeout=5).services)


def wait_health(port, code, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        got, body = curl_health(port)
        if got == code:
            return body
        assert time.monotonic() < deadline, f"/health stayed {got}: {body}"
        time.sleep(0.1)


def test_curl_health_follows_services_down_and_back(node):
    body = wait_health(node.health_port, 200)
    assert body["status"] == "serving" and body["docker"] == "up" and body["gpu_count"] == 0, body
    assert set(body["services"]) == {"container-runtime", "gpu-monitor", "validator-access", "executor-api"}
    assert body["version"] and body["executor_id"]
    pids = service_pids(node)
    # A frozen service stops answering: 503, and the body says which one.
    import os

    os.kill(pids["gpu-monitor"], signal.SIGSTOP)
    try:
        body = wait_health(node.health_port, 503)
        assert body["status"] == "degraded" and body["services"]["gpu-monitor"] != "SERVING", body
        assert body["services"]["container-runtime"] == "SERVING", body
    finally:
        os.kill(pids["gpu-monitor"], signal.SIGCONT)
    wait_health(node.health_port, 200)
    # A killed service is restarted by the launcher and /health comes back to 200. /health
    # answers from a probe at most a second old (HEALTH_CACHE), so a 200 right after the kill
    # may be from before it: the 200 counted is one probed after the new process is SERVING.
    runtime = next(s for s in service_statuses(node) if s.name == "container-runtime")
    os.kill(pids["container-runtime"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        now = next(s for s in service_statuses(node) if s.name == "container-runtime")
        if now.restarts > runtime.restarts and now.pid not in (0, runtime.pid) and now.state == runtime.state:
            break
        assert time.monotonic() < deadline, f"container-runtime not restarted: {now}"
        time.sleep(0.05)
    time.sleep(1.1)
    wait_health(node.health_port, 200)


def test_ctl_reads_a_bittensor_hotkey_file(node, tmp_path):
    """`executor ctl --key-file` takes the hotkey file bittensor-wallet writes: the executor names
    the file's own address when it refuses it (this node is managed by //Alice)."""
    from bittensor_wallet import Wallet

    from conftest import BIN

    wallet = Wallet(name="miner", hotkey="default", path=str(tmp_path))
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    hotkey_file = next(tmp_path.rglob("hotkeys/default"))
    address = json.loads(hotkey_file.read_text())["ss58Address"]
    out = subprocess.run(
        [str(BIN / "executor"), "ctl", "--endpoint", f"http://127.0.0.1:{node.grpc_port}", "--key-file", str(hotkey_file), "identity"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 1, out
    assert f"hotkey_not_allowed: hotkey {address} does not manage this executor" in out.stderr, out.stderr


def test_events_are_signed_numbered_and_resumable(api):
    """WatchEvents from grpcio: drain on and off are events; a watch from a number misses
    nothing after it, and one past the newest is OUT_OF_RANGE naming the numbers."""
    refused(lambda: api.call("WatchEvents", api.message("WatchEvents"), metadata=[]), grpc.StatusCode.UNAUTHENTICATED, "missing_signature")
    api.call("Drain", api.message("Drain", reason="python"))
    api.call("Undrain")
    drains = []
    stream = api.call("WatchEvents", api.message("WatchEvents", after_seq=0))
    for event in stream:
        if event.kind == event.DESCRIPTOR.fields_by_name["kind"].enum_type.values_by_name["EVENT_KIND_DRAIN"].number:
            drains.append(event)
            if not event.draining and any(d.draining and d.reason == "python" for d in drains):
                break
    stream.cancel()
    on = next(d for d in drains if d.draining and d.reason == "python")
    off = drains[-1]
    assert off.seq > on.seq and off.time_ms >= on.time_ms > 0
    # From the "on" event's number: the next one is there again.
    stream = api.call("WatchEvents", api.message("WatchEvents", after_seq=on.seq))
    again = next(iter(stream))
    stream.cancel()
    assert again.seq == on.seq + 1
    with pytest.raises(grpc.RpcError) as info:
        list(api.call("WatchEvents", api.message("WatchEvents", after_seq=off.seq + 10_000)))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE, info.value
    assert "past the newest event" in info.value.details(), info.value.details()
    assert dict(info.value.trailing_metadata()).get("x-executor-reason") == "events_gone"
