"""Reports sync points to the coordinator off the critical path: the
replication threads drop them in a queue and never wait on an RPC."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import grpc

from colo_plane import metrics
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.agent.replica import stats_to_proto
from colo_plane.agent.syncpoints import Role, SyncPoint

log = logging.getLogger(__name__)

RPC_TIMEOUT = 2.0
ATTEMPTS = 3
QUEUE_LIMIT = 10_000


def to_proto(point: SyncPoint, host_id: str) -> colo_pb2.ReportSyncPointRequest:
    req = colo_pb2.ReportSyncPointRequest(
        domain=point.domain,
        generation=point.generation,
        epoch=point.epoch,
        control_id=cast(colo_pb2.ControlId, int(point.control_id)),
        host_id=host_id,
        role=colo_pb2.ROLE_PRIMARY if point.role is Role.PRIMARY else colo_pb2.ROLE_SECONDARY,
        monotonic_ns=point.monotonic_ns,
        stats=stats_to_proto(point.stats),
    )
    if point.verify is not None and point.verify.checked:
        req.verify.memory_hash = point.verify.memory_hash
        req.verify.context_hash = point.verify.context_hash
    return req


class SyncReporter:
    def __init__(self, stub: colo_pb2_grpc.CoordinatorStub, host_id: str) -> None:
        self._stub = stub
        self._host_id = host_id
        self._queue: asyncio.Queue[SyncPoint] = asyncio.Queue(QUEUE_LIMIT)
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="sync-reporter")

    def submit(self, point: SyncPoint) -> None:
        """Thread-safe, never blocks."""
        self._loop.call_soon_threadsafe(self._put, point)

    def _put(self, point: SyncPoint) -> None:
        try:
            self._queue.put_nowait(point)
        except asyncio.QueueFull:
            metrics.SYNC_REPORTS_DROPPED.inc()

    async def _run(self) -> None:
        while True:
            point = await self._queue.get()
            await self._send(point)

    async def _send(self, point: SyncPoint) -> None:
        req = to_proto(point, self._host_id)
        for attempt in range(ATTEMPTS):
            try:
                await self._stub.ReportSyncPoint(req, timeout=RPC_TIMEOUT)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.NOT_FOUND,
                ):
                    log.warning(
                        "coordinator refused sync point %s of %s epoch %d: %s",
                        point.control_id.name,
                        point.domain,
                        point.epoch,
                        exc.details(),
                    )
                    return
                if attempt + 1 < ATTEMPTS:
                    await asyncio.sleep(0.1 * (attempt + 1))
        metrics.SYNC_REPORTS_DROPPED.inc()
        log.warning(
            "gave up reporting %s of %s epoch %d: coordinator unreachable",
            point.control_id.name,
            point.domain,
            point.epoch,
        )

    async def drain(self, timeout: float) -> None:
        """Send what is queued (at shutdown), for at most timeout seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not self._queue.empty():
                    await self._send(self._queue.get_nowait())
        except TimeoutError:
            pass

    async def close(self) -> None:
        self._task.cancel()
