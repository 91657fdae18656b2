"""grpcio, an independent gRPC implementation, against our servers: health on every socket and
on the public port, server reflection (v1alpha, which grpcio speaks, and v1), and a call to the
launcher made from descriptors fetched by reflection alone, with no .proto files."""

import grpc
from conftest import channel as open_channel
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVICES = ["container-runtime", "gpu-monitor", "validator-access", "executor-api", "launcher"]


def check(target):
    with open_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def list_services(channel, method="/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return sorted(s.name for r in responses for s in r.list_services_response.service)


def test_every_socket_and_the_public_port_are_serving(node):
    for name in SERVICES:
        assert check(node.socket(name)) == health_pb2.HealthCheckResponse.SERVING, name
    assert check(f"127.0.0.1:{node.grpc_port}") == health_pb2.HealthCheckResponse.SERVING


def test_unknown_health_service_is_not_found(node):
    with open_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("expected NOT_FOUND")


def test_reflection_lists_what_is_served(node):
    base = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    public = sorted(base + ["executor.api.v1.ExecutorApi", "health.v1.Health"])
    with open_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        # The public port: the signed API, health under both names, reflection.
        assert list_services(channel) == public
        assert list_services(channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") == public
    with open_channel(node.socket("launcher")) as channel:
        assert list_services(channel) == sorted(base + ["executor.launcher.v1.Launcher"])


def test_launcher_status_through_reflection_only(node):
    with open_channel(node.socket("launcher")) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("executor.launcher.v1.Launcher")
        method = service.FindMethodByName("Status")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/executor.launcher.v1.Launcher/Status",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        status = call(request_class(), timeout=5)
        serving = pool.FindEnumTypeByName("executor.launcher.v1.ServiceState").values_by_name["SERVICE_STATE_SERVING"].number
        assert [s.name for s in status.services] == SERVICES[:4]
        assert all(s.state == serving and s.pid > 0 for s in status.services)
        assert status.launcher_pid == node.process.pid


def test_the_public_port_shows_no_internal_service(node):
    """The public API's messages come from the internal files, but reflection on the public port
    describes only what it serves: the internal services' RPCs are not there (issue 17 item 13)."""
    with open_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        api = pool.FindServiceByName("executor.api.v1.ExecutorApi")
        assert "CreateContainer" in [m.name for m in api.methods]
        # The messages the public API takes and returns resolve...
        pool.FindMessageTypeByName(api.methods_by_name["CreateContainer"].input_type.full_name)
        # ...but no internal service can be looked up through the public port.
        for internal in [
            "executor.runtime.v1.ContainerRuntime",
            "executor.gpu.v1.GpuMonitor",
            "executor.access.v1.ValidatorAccess",
            "executor.launcher.v1.Launcher",
        ]:
            fresh = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            try:
                fresh.FindServiceByName(internal)
            except KeyError:
                continue
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e
                continue
            raise AssertionError(f"{internal} is described on the public port")
