"""Reports sync points to the coordinator off the critical path: the
replication threads drop them in a queue and never wait on an RPC; one task
writes them to a long-lived ReportSyncPoints stream, everything queued in
one message (not a call each, nor a message each)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import cast

import grpc

from colo_plane import metrics
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.agent.syncpoints import Role, SyncPoint

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
BATCH_LIMIT = 256  # reports a stream message
# A stream is half-closed and replaced this often, so that its deadline
# (every call has one) never cuts it while in use.
STREAM_SECONDS = 60.0
ANSWER_TIMEOUT = 2.0  # for the coordinator's answer after the half-close
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0


def to_proto(point: SyncPoint, host_id: str) -> colo_pb2.ReportSyncPointRequest:
    req = colo_pb2.ReportSyncPointRequest(
        domain=point.domain,
        generation=point.generation,
        epoch=point.epoch,
        control_id=cast(colo_pb2.ControlId, int(point.control_id)),
        host_id=host_id,
        role=colo_pb2.ROLE_PRIMARY if point.role is Role.PRIMARY else colo_pb2.ROLE_SECONDARY,
        monotonic_ns=point.monotonic_ns,
        stats=point.stats.proto(),
    )
    if point.verify is not None and point.verify.checked:
        req.verify.memory_hash = point.verify.memory_hash
        req.verify.context_hash = point.verify.context_hash
    return req


class SyncReporter:
    def __init__(self, stub: colo_pb2_grpc.CoordinatorStub, host_id: str) -> None:
        self._stub = stub
        self._host_id = host_id
        self._pending: deque[SyncPoint] = deque()  # not yet written to any stream
        self._ready = asyncio.Event()  # set when _pending gets a point, or at drain
        self._draining = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="sync-reporter")

    def submit(self, point: SyncPoint) -> None:
        """Thread-safe, never blocks."""
        self._loop.call_soon_threadsafe(self._put, point)

    def _put(self, point: SyncPoint) -> None:
        if len(self._pending) >= QUEUE_LIMIT:
            metrics.SYNC_REPORTS_DROPPED.inc()
            return
        self._pending.append(point)
        self._ready.set()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            # No stream while there is nothing to say.
            while not self._pending and not self._draining:
                self._ready.clear()
                await self._ready.wait()
            if not self._pending:
                return  # drained
            try:
                if await self._stream():
                    backoff = BACKOFF_MIN
                    continue
                log.info(
                    "the coordinator ended the sync-point stream early; %d point(s) to re-send",
                    len(self._pending),
                )
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError) as exc:
                why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                log.warning(
                    "sync-point stream to the coordinator failed (%s); %d point(s) waiting, retry in %.2f s",
                    why,
                    len(self._pending),
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _stream(self) -> bool:
        """One ReportSyncPoints call: writes queued points as they come, for
        STREAM_SECONDS (or until drained), then half-closes and reads the
        answer.  False: the coordinator stopped reading before the end (the
        points it did not handle are queued again)."""
        call = self._stub.ReportSyncPoints(timeout=STREAM_SECONDS + ANSWER_TIMEOUT)
        written: deque[SyncPoint] = deque()  # on this stream, unconfirmed
        end = self._loop.time() + STREAM_SECONDS
        try:
            while self._loop.time() < end:
                if not self._pending:
                    if self._draining:
                        break
                    self._ready.clear()
                    try:
                        async with asyncio.timeout_at(end):
                            await self._ready.wait()
                    except TimeoutError:
                        break
                    continue
                batch = list(itertools.islice(self._pending, BATCH_LIMIT))
                message = colo_pb2.ReportSyncPointsRequest(points=[to_proto(p, self._host_id) for p in batch])
                try:
                    await call.write(message)
                except asyncio.InvalidStateError:
                    break  # the call is over: the points stay queued; the answer says how far it got
                for _ in batch:
                    written.append(self._pending.popleft())
            await call.done_writing()
            async with asyncio.timeout(ANSWER_TIMEOUT):
                resp = cast(colo_pb2.ReportSyncPointsResponse, await call)
        except BaseException:
            # Whether the coordinator saw what was written is unknown: not re-sent
            # (a report goes at most once), counted as perhaps lost.
            call.cancel()
            if written:
                metrics.SYNC_REPORTS_UNCONFIRMED.inc(len(written))
                log.warning("%d sync-point report(s) may be lost with a broken stream", len(written))
            raise
        handled = resp.accepted + resp.refused
        if resp.refused:
            log.warning(
                "the coordinator refused %d of %d sync-point report(s) (its log says why)",
                resp.refused,
                handled,
            )
        # Handled in the order written; if it stopped reading early (it is shutting
        # down), the rest go again, first in the queue.
        for _ in range(min(int(handled), len(written))):
            written.popleft()
        self._pending.extendleft(reversed(written))
        return not written

    async def drain(self, timeout: float) -> None:
        """At shutdown: writes what is queued and half-closes the stream, for at
        most timeout seconds; what is left then is dropped (and counted)."""
        self._draining = True
        self._ready.set()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            pass
        except Exception:
            log.exception("sync reporter failed")
        await self.close()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._pending:
            metrics.SYNC_REPORTS_DROPPED.inc(len(self._pending))
            log.warning("%d sync-point report(s) dropped at shutdown", len(self._pending))
            self._pending.clear()
