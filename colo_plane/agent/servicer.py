"""The Agent gRPC service: each RPC hands its request to AgentCore and
turns an RpcError into the canonical status."""

from __future__ import annotations

import logging

from colo_plane import __version__
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.agent.core import AgentCore
from colo_plane.rpc import Context, answer

log = logging.getLogger(__name__)


class AgentServicer(colo_pb2_grpc.AgentServicer):  # type: ignore[misc]  # generated base is untyped
    def __init__(self, core: AgentCore, incarnation: str) -> None:
        self.core = core
        self.incarnation = incarnation

    async def PrepareSecondary(  # noqa: N802 (gRPC method names)
        self, request: colo_pb2.PrepareSecondaryRequest, context: Context
    ) -> colo_pb2.PrepareSecondaryResponse:
        return await answer(self.core.prepare_secondary, request, context)

    async def StartPrimary(  # noqa: N802
        self, request: colo_pb2.StartPrimaryRequest, context: Context
    ) -> colo_pb2.StartPrimaryResponse:
        return await answer(self.core.start_primary, request, context)

    async def Checkpoint(  # noqa: N802
        self, request: colo_pb2.AgentCheckpointRequest, context: Context
    ) -> colo_pb2.AgentCheckpointResponse:
        return await answer(self.core.checkpoint, request, context)

    async def Promote(self, request: colo_pb2.PromoteRequest, context: Context) -> colo_pb2.PromoteResponse:  # noqa: N802
        return await answer(self.core.promote, request, context)

    async def SetUnprotected(  # noqa: N802
        self, request: colo_pb2.SetUnprotectedRequest, context: Context
    ) -> colo_pb2.SetUnprotectedResponse:
        return await answer(self.core.set_unprotected, request, context)

    async def Release(self, request: colo_pb2.ReleaseRequest, context: Context) -> colo_pb2.ReleaseResponse:  # noqa: N802
        return await answer(self.core.release, request, context)

    async def GetStatus(  # noqa: N802
        self, request: colo_pb2.GetStatusRequest, context: Context
    ) -> colo_pb2.GetStatusResponse:
        domains = await answer(self.core.status, request, context)
        return colo_pb2.GetStatusResponse(
            host_id=self.core.config.host_id,
            incarnation=self.incarnation,
            version=__version__,
            domains=domains,
        )
