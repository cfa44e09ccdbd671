"""grpc.health.v1 on both daemons as a probe or an operator's tools use
it: Check, Watch (which the metrics interceptor broke: the servicer is a
coroutine that writes, not an async generator), and reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cluster import start_agent
from coordinated import agents_alive, start_coordinator, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from colo_plane import promtext

pytestmark = pytest.mark.system

SERVICES = {"coordinator": "colo.v1.Coordinator", "agent": "colo.v1.Agent"}


def test_health_watch_and_check_on_both_daemons(tmp_path: Path) -> None:
    coord = start_coordinator(tmp_path)
    agent = start_agent(tmp_path, "host-a", coord.address)
    try:
        wait_for("agent registered", lambda: agents_alive(coord, 1), timeout=15)
        for daemon, address, metrics in (
            ("coordinator", coord.address, coord.info["metrics"]),
            ("agent", agent.info["grpc"], agent.info["metrics"]),
        ):
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for service in ("", SERVICES[daemon]):
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                    watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=5)
                    first = next(iter(watch))
                    assert first.status == health_pb2.HealthCheckResponse.SERVING, (daemon, service)
                    watch.cancel()
            text = promtext.scrape(metrics)
            assert promtext.total([text], "grpc_server_started_total", grpc_method="Watch") >= 2, daemon
    finally:
        agent.stop()
        coord.stop()


def test_reflection_v1_and_v1alpha_list_the_services(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    coord = start_coordinator(tmp_path)
    try:
        with grpc.insecure_channel(coord.address) as channel:
            for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
                call = channel.stream_stream(
                    f"/{package}.ServerReflection/ServerReflectionInfo",
                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
                )
                (reply,) = list(
                    call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
                )
                names = {s.name for s in reply.list_services_response.service}
                assert {"colo.v1.Coordinator", "grpc.health.v1.Health"} <= names, package
    finally:
        coord.stop()
