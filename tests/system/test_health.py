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
