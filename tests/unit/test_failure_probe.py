"""The confirming step both of the failure detector's confirmations share
(FailureDetector._probe_suspect, docs/coordinator.md "Failure detection"),
against real sockets: an agent that answers GetStatus clears the suspicion;
a port that refuses is a fact (lost at once, reason "refused"); a port that
takes the connection but never answers is only a failed probe."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.coordinator.core import Coordinator
from colo_plane.coordinator.failure import Probe
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.store import SqliteStore


class AnsweringAgent(colo_pb2_grpc.AgentServicer):
    async def GetStatus(  # noqa: N802 - the gRPC method's name
        self, request: colo_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> colo_pb2.GetStatusResponse:
        return colo_pb2.GetStatusResponse()


async def _probe(tmp: Path, address: str) -> tuple[Probe, Coordinator]:
    coordinator = Coordinator(SqliteStore(tmp / "c.db"), Settings())
    coordinator.registry.load([colo_pb2.AgentInfo(host_id="h", grpc_address=address)], grace_until=0.0)
    agent = coordinator.registry.agents["h"]
    probe = await coordinator.detector._probe_suspect(agent, lambda now: "suspected for the test")
    return probe, coordinator


def _run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_an_agent_that_answers_is_cleared(tmp_path: Path) -> None:
    async def body() -> None:
        server = grpc.aio.server()
        colo_pb2_grpc.add_AgentServicer_to_server(AnsweringAgent(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            probe, coordinator = await _probe(tmp_path, f"127.0.0.1:{port}")
            assert (probe.code, probe.settled) == (None, False)
            assert coordinator.registry.agents["h"].alive
            await coordinator.registry.close()
        finally:
            await server.stop(0)

    _run(body)


def test_a_port_that_refuses_is_a_fact(tmp_path: Path) -> None:
    async def body() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        probe, coordinator = await _probe(tmp_path, f"127.0.0.1:{port}")
        assert probe.settled and probe.code == grpc.StatusCode.UNAVAILABLE
        assert not coordinator.registry.agents["h"].alive
        (lost,) = [e for e in coordinator.bus.recent(limit=10) if e.kind == colo_pb2.EVENT_KIND_AGENT_LOST]
        assert lost.message == "suspected for the test, and its port refuses connections"
        await coordinator.registry.close()

    _run(body)


def test_a_port_that_never_answers_is_only_a_failed_probe(tmp_path: Path) -> None:
    async def body() -> None:
        with socket.create_server(("127.0.0.1", 0)) as mute:  # takes the connection, says nothing
            probe, coordinator = await _probe(tmp_path, f"127.0.0.1:{mute.getsockname()[1]}")
            assert not probe.settled and probe.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert coordinator.registry.agents["h"].alive  # the caller decides, by how long it lasts
            await coordinator.registry.close()

    _run(body)
