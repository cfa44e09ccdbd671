"""ReportSyncPoints against the coordinator's real gRPC server (in this
process, real SQLite): each report of a message is handled as one ReportSyncPoint call, a
refused one is counted and logged and does not end the stream, the answer
counts both, and a coordinator that stops ends open streams at once with
what it handled."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.coordinator import server as coordinator_server
from colo_plane.coordinator.server import Running
from colo_plane.coordinator.settings import Settings

SUSPENDED = colo_pb2.CONTROL_ID_SECONDARY_SUSPENDED
RESUMED = colo_pb2.CONTROL_ID_SECONDARY_RESUMED
SYNC_POINT = colo_pb2.EVENT_KIND_SYNC_POINT


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _refused(reason: str) -> float:
    return _sample("colo_sync_reports_refused_total", reason=reason)


def _point(
    domain: str = "vm1", generation: int = 3, epoch: int = 9, control_id: int = SUSPENDED, ns: int = 1
) -> colo_pb2.ReportSyncPointRequest:
    return colo_pb2.ReportSyncPointRequest(
        domain=domain,
        generation=generation,
        epoch=epoch,
        control_id=control_id,  # type: ignore[arg-type]
        host_id="host-b",
        role=colo_pb2.ROLE_SECONDARY,
        monotonic_ns=ns,
        stats=colo_pb2.CheckpointStats(dirty_b_pages=ns),
    )


def _batch(*points: colo_pb2.ReportSyncPointRequest) -> colo_pb2.ReportSyncPointsRequest:
    return colo_pb2.ReportSyncPointsRequest(points=points)


async def _coordinator(tmp: Path) -> Running:
    """A coordinator with one pair, vm1, at generation 3 (protected, dropped, protected again)."""
    running = await coordinator_server.start(str(tmp / "c.db"), "127.0.0.1:0", Settings())
    for host in ("host-a", "host-b"):  # reports come only from registered hosts
        running.core.registry.register(colo_pb2.RegisterAgentRequest(host_id=host, incarnation="i1"))
    machine = running.core.machine
    rec = machine.create(colo_pb2.DomainSpec(domain="vm1", sim=colo_pb2.SimDomainSpec(pages=64)), "host-a")
    machine.start_syncing(rec, "host-b", b"s" * 32, why="test")
    machine.secondary_dropped(rec, colo_pb2.FAILOVER_CAUSE_SECONDARY_LOST, message="test")
    machine.start_syncing(rec, "host-b", b"t" * 32, why="test")
    assert rec.generation == 3
    return running


async def _sync_events(stub: colo_pb2_grpc.CoordinatorStub) -> list[colo_pb2.Event]:
    """The SYNC_POINT events of vm1 the coordinator holds, read over WatchEvents."""
    out: list[colo_pb2.Event] = []
    call = stub.WatchEvents(
        colo_pb2.WatchEventsRequest(domain="vm1", history=100, kinds=[SYNC_POINT]), timeout=0.5
    )
    try:
        async for item in call:
            out.append(item.event)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return out


def test_a_refused_message_is_counted_and_the_stream_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        running = await _coordinator(tmp_path)
        channel = grpc.aio.insecure_channel(running.address)
        stub = colo_pb2_grpc.CoordinatorStub(channel)
        before = {r: _refused(r) for r in ("stale_generation", "pair_not_found", "invalid_field")}
        handled_before = _sample(
            "grpc_server_handled_total",
            grpc_type="client_stream",
            grpc_service="colo.v1.Coordinator",
            grpc_method="ReportSyncPoints",
            grpc_code="OK",
        )
        try:
            call = stub.ReportSyncPoints(timeout=10)
            await call.write(_batch(_point(ns=101)))
            await call.write(
                _batch(_point(generation=2, ns=102), _point(ns=103, control_id=RESUMED))
            )  # stale, ok
            await call.write(_batch(_point(domain="nope", ns=104)))  # no such pair
            await call.write(_batch(_point(generation=0, ns=105)))  # 0 is "not set"
            await call.write(
                _batch(_point(control_id=7, ns=106), _point(ns=107, epoch=10))
            )  # not a sync point
            await call.write(_batch())  # an empty message is no report at all
            await call.done_writing()
            resp = await call
            assert (resp.accepted, resp.refused) == (3, 4)

            # The good ones were applied as ReportSyncPoint would: SYNC_POINT events, in order.
            events = await _sync_events(stub)
            assert [(e.monotonic_ns, e.control_id, e.epoch) for e in events] == [
                (101, SUSPENDED, 9),
                (103, RESUMED, 9),
                (107, SUSPENDED, 10),
            ]
            assert all(e.generation == 3 and e.host_id == "host-b" for e in events)
            assert events[0].stats.dirty_b_pages == 101
            # The refused ones are counted by reason, and each is logged with why.
            assert _refused("stale_generation") - before["stale_generation"] == 1
            assert _refused("pair_not_found") - before["pair_not_found"] == 1
            assert _refused("invalid_field") - before["invalid_field"] == 2
            refusals = [r.getMessage() for r in caplog.records if "refused sync point" in r.getMessage()]
            assert len(refusals) == 4
            assert "superseded by 3" in refusals[0] and "no pair named 'nope'" in refusals[1]
            # The stream itself ended OK, counted by the gRPC metrics as a client stream.
            handled = _sample(
                "grpc_server_handled_total",
                grpc_type="client_stream",
                grpc_service="colo.v1.Coordinator",
                grpc_method="ReportSyncPoints",
                grpc_code="OK",
            )
            assert handled - handled_before == 1
        finally:
            await channel.close()
            await running.stop(grace=1.0)

    with caplog.at_level(logging.WARNING, logger="colo_plane.coordinator.servicer"):
        asyncio.run(go())


def test_unary_report_refusals_are_counted_too(tmp_path: Path) -> None:
    async def go() -> None:
        running = await _coordinator(tmp_path)
        channel = grpc.aio.insecure_channel(running.address)
        stub = colo_pb2_grpc.CoordinatorStub(channel)
        before = _refused("stale_generation")
        try:
            resp = await stub.ReportSyncPoint(_point(ns=201), timeout=5)
            assert resp.generation == 3
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReportSyncPoint(_point(generation=1, ns=202), timeout=5)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert _refused("stale_generation") - before == 1
        finally:
            await channel.close()
            await running.stop(grace=1.0)

    asyncio.run(go())


def test_stopping_coordinator_ends_open_streams_with_what_it_handled(tmp_path: Path) -> None:
    """A stream an agent keeps open does not hold the graceful stop for its
    whole grace: the answer comes at once and counts what was handled."""

    async def go() -> None:
        running = await _coordinator(tmp_path)
        channel = grpc.aio.insecure_channel(running.address)
        stub = colo_pb2_grpc.CoordinatorStub(channel)
        try:
            call = stub.ReportSyncPoints(timeout=30)
            await call.write(_batch(_point(ns=301), _point(ns=302, control_id=RESUMED)))
            for _ in range(100):
                if len(running.core.bus.recent(domain="vm1", kinds=[SYNC_POINT], limit=10)) == 2:
                    break
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await running.stop(grace=10.0)
            assert time.monotonic() - t0 < 2.0
            resp = await call
            assert (resp.accepted, resp.refused) == (2, 0)
        finally:
            await channel.close()

    asyncio.run(go())
