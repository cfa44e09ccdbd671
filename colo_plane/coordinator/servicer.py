"""The Coordinator gRPC service: each RPC hands its request to Coordinator
(core.py) and turns an RpcError into the canonical status."""

# ruff: noqa: N802  (gRPC method names)

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.coordinator.core import Coordinator
from colo_plane.coordinator.events import WatcherTooSlow
from colo_plane.coordinator.store import StoreError
from colo_plane.rpc import Context, Req, Resp, RpcError, answer


async def _call(fn: Callable[[Req], Awaitable[Resp]], request: Req, context: Context) -> Resp:
    try:
        return await answer(fn, request, context)
    except StoreError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the coordinator's store failed: {exc}; retry")
        raise


class CoordinatorServicer(colo_pb2_grpc.CoordinatorServicer):  # type: ignore[misc]
    def __init__(self, core: Coordinator) -> None:
        self.core = core

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
        try:
            async for event in self.core.watch(request):
                yield colo_pb2.WatchEventsResponse(event=event)
        except RpcError as exc:
            await context.abort(exc.code, exc.message)
        except WatcherTooSlow as exc:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{exc}: reconnect with after_sequence set to the last sequence you saw",
            )

    # -- agent side ----------------------------------------------------------------

    async def RegisterAgent(
        self, request: colo_pb2.RegisterAgentRequest, context: Context
    ) -> colo_pb2.RegisterAgentResponse:
        return await _call(self.core.register_agent, request, context)

    async def Heartbeat(
        self, request: colo_pb2.HeartbeatRequest, context: Context
    ) -> colo_pb2.HeartbeatResponse:
        return await _call(self.core.heartbeat, request, context)

    async def RequestCheckpoint(
        self, request: colo_pb2.RequestCheckpointRequest, context: Context
    ) -> colo_pb2.RequestCheckpointResponse:
        return await _call(self.core.request_checkpoint, request, context)

    async def ReportSyncPoint(
        self, request: colo_pb2.ReportSyncPointRequest, context: Context
    ) -> colo_pb2.ReportSyncPointResponse:
        return await _call(self.core.report_sync_point, request, context)
