"""The Agent gRPC service: each RPC hands its request to AgentCore and
turns an RpcError into the canonical status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from colo_plane import __version__
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.agent.core import AgentCore
from colo_plane.rpc import RpcError

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


async def _call(fn: Callable[[Req], Awaitable[Resp]], request: Req, context: Context) -> Resp:
    try:
        return await fn(request)
    except RpcError as exc:
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises


class AgentServicer(colo_pb2_grpc.AgentServicer):  # type: ignore[misc]  # generated base is untyped
    def __init__(self, core: AgentCore, incarnation: str) -> None:
        self.core = core
        self.incarnation = incarnation

    async def PrepareSecondary(  # noqa: N802 (gRPC method names)
        self, request: colo_pb2.PrepareSecondaryRequest, context: Context
    ) -> colo_pb2.PrepareSecondaryResponse:
        return await _call(self.core.prepare_secondary, request, context)

    async def StartPrimary(  # noqa: N802
        self, request: colo_pb2.StartPrimaryRequest, context: Context
    ) -> colo_pb2.StartPrimaryResponse:
        return await _call(self.core.start_primary, request, context)

    async def Checkpoint(  # noqa: N802
        self, request: colo_pb2.AgentCheckpointRequest, context: Context
    ) -> colo_pb2.AgentCheckpointResponse:
        return await _call(self.core.checkpoint, request, context)

    async def Promote(self, request: colo_pb2.PromoteRequest, context: Context) -> colo_pb2.PromoteResponse:  # noqa: N802
        return await _call(self.core.promote, request, context)

    async def SetUnprotected(  # noqa: N802
        self, request: colo_pb2.SetUnprotectedRequest, context: Context
    ) -> colo_pb2.SetUnprotectedResponse:
        return await _call(self.core.set_unprotected, request, context)

    async def Release(self, request: colo_pb2.ReleaseRequest, context: Context) -> colo_pb2.ReleaseResponse:  # noqa: N802
        return await _call(self.core.release, request, context)

    async def GetStatus(  # noqa: N802
        self, request: colo_pb2.GetStatusRequest, context: Context
    ) -> colo_pb2.GetStatusResponse:
        domains = await _call(self.core.status, request, context)
        return colo_pb2.GetStatusResponse(
            host_id=self.core.config.host_id,
            incarnation=self.incarnation,
            version=__version__,
            domains=domains,
        )
