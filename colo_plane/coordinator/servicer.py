"""The Coordinator gRPC service: each RPC hands its request to Coordinator
(core.py; the agents' own RPCs to its HostCalls, hosts.py) and turns an
RpcError into the canonical status."""

# ruff: noqa: N802  (gRPC method names)

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from prometheus_client import Counter

from colo_plane import metrics
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.coordinator.core import Coordinator
from colo_plane.coordinator.events import WatcherTooSlow
from colo_plane.coordinator.store import StoreError
from colo_plane.rpc import Context, Req, Resp, RpcError, answer, reason_label

log = logging.getLogger(__name__)


@functools.cache
def _refused(reason: str) -> Counter:
    return metrics.SYNC_REPORTS_REFUSED.labels(reason)


def _control_name(control_id: int) -> str:
    if control_id in colo_pb2.ControlId.values():
        return colo_pb2.ControlId.Name(control_id).removeprefix("CONTROL_ID_")
    return f"control_id {control_id}"


async def _call(fn: Callable[[Req], Awaitable[Resp]], request: Req, context: Context) -> Resp:
    try:
        return await answer(fn, request, context)
    except StoreError as exc:
        err = RpcError(
            grpc.StatusCode.UNAVAILABLE,
            f"the coordinator's store failed: {exc}; retry",
            reason=colo_pb2.ERROR_REASON_STORE_FAILED,
        )
        await context.abort(err.code, err.message, trailing_metadata=err.trailers())
        raise


class CoordinatorServicer(colo_pb2_grpc.CoordinatorServicer):  # type: ignore[misc]
    def __init__(self, core: Coordinator) -> None:
        self.core = core
        self._closing = asyncio.Event()

    def end_streams(self) -> None:
        """Shutdown: every ReportSyncPoints stream answers now with what it
        handled, rather than holding the server's graceful stop for its whole
        grace (the agents send the rest to the next coordinator), and every
        WatchEvents stream ends UNAVAILABLE: the coordinator is going away,
        the watcher reconnects (`colo watch` does)."""
        self._closing.set()

    # -- client side --------------------------------------------------------------

    async def ProtectDomain(
        self, request: colo_pb2.ProtectDomainRequest, context: Context
    ) -> colo_pb2.ProtectDomainResponse:
        return await _call(self.core.protect, request, context)

    async def UnprotectDomain(
        self, request: colo_pb2.UnprotectDomainRequest, context: Context
    ) -> colo_pb2.UnprotectDomainResponse:
        return await _call(self.core.unprotect, request, context)

    async def GetPair(self, request: colo_pb2.GetPairRequest, context: Context) -> colo_pb2.GetPairResponse:
        return await _call(self.core.get_pair, request, context)

    async def ListPairs(
        self, request: colo_pb2.ListPairsRequest, context: Context
    ) -> colo_pb2.ListPairsResponse:
        return await _call(self.core.list_pairs, request, context)

    async def Checkpoint(
        self, request: colo_pb2.CoordinatorCheckpointRequest, context: Context
    ) -> colo_pb2.CoordinatorCheckpointResponse:
        return await _call(self.core.checkpoint, request, context)

    async def Failover(
        self, request: colo_pb2.FailoverRequest, context: Context
    ) -> colo_pb2.FailoverResponse:
        return await _call(self.core.failover, request, context)

    async def DrainHost(
        self, request: colo_pb2.DrainHostRequest, context: Context
    ) -> colo_pb2.DrainHostResponse:
        return await _call(self.core.drain, request, context)

    async def ListAgents(
        self, request: colo_pb2.ListAgentsRequest, context: Context
    ) -> colo_pb2.ListAgentsResponse:
        return await _call(self.core.list_agents, request, context)

    async def WatchEvents(
        self, request: colo_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[colo_pb2.WatchEventsResponse]:
        events = self.core.watch(request).__aiter__()
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while True:
                # The next event, or the coordinator going away, whichever comes first.
                following = asyncio.ensure_future(events.__anext__())
                await asyncio.wait((following, closing), return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                    going = RpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        "the coordinator is shutting down: reconnect, with after_sequence set to the last "
                        "sequence you saw",
                        reason=colo_pb2.ERROR_REASON_SHUTTING_DOWN,
                    )
                    await context.abort(going.code, going.message, trailing_metadata=going.trailers())
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                yield colo_pb2.WatchEventsResponse(event=event)
        except RpcError as exc:
            await context.abort(exc.code, exc.message, trailing_metadata=exc.trailers())
        except WatcherTooSlow as exc:
            err = RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{exc}: reconnect with after_sequence set to the last sequence you saw",
                reason=colo_pb2.ERROR_REASON_WATCHER_TOO_SLOW,
            )
            await context.abort(err.code, err.message, trailing_metadata=err.trailers())
        finally:
            closing.cancel()
            await events.aclose()  # type: ignore[attr-defined]

    # -- agent side ----------------------------------------------------------------

    async def RegisterAgent(
        self, request: colo_pb2.RegisterAgentRequest, context: Context
    ) -> colo_pb2.RegisterAgentResponse:
        return await _call(self.core.hosts.register_agent, request, context)

    async def Heartbeat(
        self, request: colo_pb2.HeartbeatRequest, context: Context
    ) -> colo_pb2.HeartbeatResponse:
        return await _call(self.core.hosts.heartbeat, request, context)

    async def RequestCheckpoint(
        self, request: colo_pb2.RequestCheckpointRequest, context: Context
    ) -> colo_pb2.RequestCheckpointResponse:
        return await _call(self.core.hosts.request_checkpoint, request, context)

    async def ReportSyncPoint(
        self, request: colo_pb2.ReportSyncPointRequest, context: Context
    ) -> colo_pb2.ReportSyncPointResponse:
        return await _call(self._report, request, context)

    async def _report(self, request: colo_pb2.ReportSyncPointRequest) -> colo_pb2.ReportSyncPointResponse:
        try:
            return await self.core.hosts.report_sync_point(request)
        except RpcError as exc:
            _refused(reason_label(exc.reason)).inc()
            raise

    async def ReportSyncPoints(
        self, request_iterator: AsyncIterator[colo_pb2.ReportSyncPointsRequest], context: Context
    ) -> colo_pb2.ReportSyncPointsResponse:
        out = colo_pb2.ReportSyncPointsResponse()

        async def read() -> None:
            async for message in request_iterator:
                for req in message.points:
                    try:
                        await self.core.hosts.report_sync_point(req)
                    except RpcError as exc:
                        # One refused report must not end the stream: the ones after it are good.
                        out.refused += 1
                        _refused(reason_label(exc.reason)).inc()
                        log.warning(
                            "refused sync point %s of %r (generation %d, epoch %d) from %s: %s: %s",
                            _control_name(req.control_id),
                            req.domain,
                            req.generation,
                            req.epoch,
                            req.host_id or context.peer(),
                            exc.code.name,
                            exc.message,
                        )
                    else:
                        out.accepted += 1

        # Read beside a wait for shutdown: a stream ends at the agent's half-close,
        # or early when the coordinator stops (the answer says how far it got).
        reader = asyncio.ensure_future(read())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait((reader, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            # Nothing if it is done. Else it is waiting for the next message: handling one
            # does not suspend, so a cancellation never lands between handling and counting.
            reader.cancel()
        if reader in done:
            reader.result()  # a bug in handling ends the stream with UNKNOWN
        else:
            await asyncio.wait((reader,))  # let the cancellation land: the counts are final
        return out
