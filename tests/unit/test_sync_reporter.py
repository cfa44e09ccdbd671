"""The agent's sync-point reporter against a stand-in coordinator (a real
grpc.aio server in this process): one stream for many points, in order;
nothing lost while the coordinator is unreachable; what a stopping
coordinator did not handle is sent again; drain flushes and half-closes,
and counts what it could not send."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import REGISTRY

from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.agent import reporter as reporter_mod
from colo_plane.agent.reporter import SyncReporter
from colo_plane.agent.syncpoints import Role, Stats, SyncPoint
from colo_plane.native import ControlId


class StandIn(colo_pb2_grpc.CoordinatorServicer):  # type: ignore[misc]
    """Records every point it handles.  With stop_after = n, the first stream
    ends after handling n points (the rest of their message, and what comes
    after, was sent but never handled), as a coordinator that stops reading
    when it shuts down."""

    def __init__(self, stop_after: int = 0) -> None:
        self.points: list[colo_pb2.ReportSyncPointRequest] = []
        self.streams = 0
        self.half_closed = 0
        self.unary = 0
        self.stop_after = stop_after

    async def ReportSyncPoint(self, request: Any, context: Any) -> colo_pb2.ReportSyncPointResponse:  # noqa: N802
        self.unary += 1
        return colo_pb2.ReportSyncPointResponse(generation=request.generation)

    async def ReportSyncPoints(  # noqa: N802
        self, request_iterator: AsyncIterator[colo_pb2.ReportSyncPointsRequest], context: Any
    ) -> colo_pb2.ReportSyncPointsResponse:
        self.streams += 1
        stop_after, self.stop_after = self.stop_after, 0
        accepted = 0
        async for message in request_iterator:
            for req in message.points:
                if stop_after and accepted == stop_after:
                    return colo_pb2.ReportSyncPointsResponse(accepted=accepted)
                self.points.append(req)
                accepted += 1
        self.half_closed += 1
        return colo_pb2.ReportSyncPointsResponse(accepted=accepted)


async def _serve(servicer: StandIn, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    colo_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _point(epoch: int) -> SyncPoint:
    return SyncPoint("vm1", 1, epoch, ControlId.SECONDARY_RESUMED, Role.SECONDARY, epoch, Stats(pages=epoch))


def _dropped() -> float:
    return REGISTRY.get_sample_value("colo_sync_reports_dropped_total") or 0.0


async def _until(probe: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.01)


def test_points_go_in_order_on_one_stream_and_drain_half_closes() -> None:
    async def go() -> None:
        coordinator = StandIn()
        server, port = await _serve(coordinator)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        reporter = SyncReporter(colo_pb2_grpc.CoordinatorStub(channel), "host-b")
        # submit() is called from the replication threads.
        threads = [
            threading.Thread(target=lambda lo=lo: [reporter.submit(_point(e)) for e in range(lo, lo + 50)])
            for lo in (1, 51)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        await _until(lambda: len(coordinator.points) == 100)
        await reporter.drain(2.0)
        assert coordinator.streams == 1 and coordinator.half_closed == 1 and coordinator.unary == 0
        epochs = [p.epoch for p in coordinator.points]
        assert sorted(epochs) == list(range(1, 101))
        # Each thread's points keep their order.
        assert [e for e in epochs if e <= 50] == list(range(1, 51))
        assert all(p.host_id == "host-b" and p.stats.pages == p.epoch for p in coordinator.points)
        await channel.close()
        await server.stop(None)

    asyncio.run(go())


def test_nothing_is_lost_while_the_coordinator_is_unreachable() -> None:
    async def go() -> None:
        port = _free_port()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        reporter = SyncReporter(colo_pb2_grpc.CoordinatorStub(channel), "host-b")
        dropped = _dropped()
        for epoch in range(1, 6):
            reporter.submit(_point(epoch))
        await asyncio.sleep(0.5)  # several attempts fail meanwhile
        coordinator = StandIn()
        server, _ = await _serve(coordinator, port)
        await _until(lambda: len(coordinator.points) == 5)
        reporter.submit(_point(6))
        await _until(lambda: len(coordinator.points) == 6)
        assert [p.epoch for p in coordinator.points] == [1, 2, 3, 4, 5, 6]
        assert _dropped() == dropped
        await reporter.drain(2.0)
        await channel.close()
        await server.stop(None)

    asyncio.run(go())


def test_what_a_stopping_coordinator_did_not_handle_is_sent_again() -> None:
    async def go() -> None:
        coordinator = StandIn(stop_after=3)
        server, port = await _serve(coordinator)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        reporter = SyncReporter(colo_pb2_grpc.CoordinatorStub(channel), "host-b")
        # One at a time, as sync points come: the fourth is written, read, not handled.
        for epoch in range(1, 5):
            reporter.submit(_point(epoch))
            await asyncio.sleep(0.05)
        for epoch in range(5, 11):
            reporter.submit(_point(epoch))
        await _until(lambda: len(coordinator.points) == 10)
        await reporter.drain(2.0)
        assert [p.epoch for p in coordinator.points] == list(range(1, 11))  # once each, in order
        assert coordinator.streams == 2
        await channel.close()
        await server.stop(None)

    asyncio.run(go())


def test_drain_counts_what_it_could_not_send() -> None:
    async def go() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{_free_port()}")
        reporter = SyncReporter(colo_pb2_grpc.CoordinatorStub(channel), "host-b")
        dropped = _dropped()
        for epoch in range(1, 4):
            reporter.submit(_point(epoch))
        await reporter.drain(0.3)
        assert _dropped() - dropped == 3
        await channel.close()

    asyncio.run(go())


def test_a_full_queue_drops_and_counts_new_points(monkeypatch: Any) -> None:
    async def go() -> None:
        monkeypatch.setattr(reporter_mod, "QUEUE_LIMIT", 4)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{_free_port()}")
        reporter = SyncReporter(colo_pb2_grpc.CoordinatorStub(channel), "host-b")
        dropped = _dropped()
        for epoch in range(1, 7):
            reporter.submit(_point(epoch))
        await asyncio.sleep(0.05)
        assert _dropped() - dropped == 2
        await reporter.close()
        assert _dropped() - dropped == 6  # and the 4 queued, at close
        await channel.close()

    asyncio.run(go())
