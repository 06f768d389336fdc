"""Retries, against an in-process gRPC server that refuses the first calls as UNAVAILABLE (a
service starting or moving): the client's own retries absorb them, only for that code, and
``attempts=1`` turns them off."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from kappa import KappaError, NotFound, Registry
from kappa.registry.v1 import registry_pb2

METHOD = "/kappa.registry.v1.Registry/ListVersions"


class Flaky(grpc.GenericRpcHandler):
    """Answers ListVersions after refusing ``refusals`` calls with ``code``."""

    def __init__(self, refusals: int, code: grpc.StatusCode) -> None:
        self.refusals, self.code, self.calls = refusals, code, 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != METHOD:
            return None

        def answer(request: registry_pb2.ListVersionsRequest, context: grpc.ServicerContext) -> object:
            self.calls += 1
            if self.calls <= self.refusals:
                context.abort(self.code, f"refusal {self.calls}")
            return registry_pb2.ListVersionsResponse(next_version=7)

        return grpc.unary_unary_rpc_method_handler(
            answer,
            request_deserializer=registry_pb2.ListVersionsRequest.FromString,
            response_serializer=registry_pb2.ListVersionsResponse.SerializeToString,
        )


@pytest.fixture
def serve() -> Iterator:
    servers: list[grpc.Server] = []

    def start(handler: Flaky) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def test_unavailable_is_retried_up_to_the_attempts_and_nothing_else_is(serve) -> None:
    flaky = Flaky(2, grpc.StatusCode.UNAVAILABLE)
    with Registry(serve(flaky), timeout=10) as client:
        assert client.next_version("m") == 7
    assert flaky.calls == 3

    once = Flaky(2, grpc.StatusCode.UNAVAILABLE)
    with Registry(serve(once), timeout=10, attempts=1) as client, pytest.raises(KappaError) as refused:
        client.next_version("m")
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE and once.calls == 1

    missing = Flaky(1, grpc.StatusCode.NOT_FOUND)
    with Registry(serve(missing), timeout=10) as client, pytest.raises(NotFound):
        client.list_versions("m")
    assert missing.calls == 1
