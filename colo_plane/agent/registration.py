"""Registers this agent with the coordinator and keeps its heartbeat."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from colo_plane import __version__, native
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.rpc import seconds

log = logging.getLogger(__name__)

RPC_TIMEOUT = 2.0
DEFAULT_INTERVAL = 0.2


class Registration:
    def __init__(
        self,
        stub: colo_pb2_grpc.CoordinatorStub,
        *,
        host_id: str,
        incarnation: str,
        grpc_address: str,
        data_address: str,
        service_host: str,
        labels: dict[str, str],
        statuses: Callable[[], list[colo_pb2.DomainStatus]],
        superseded: Callable[[list[colo_pb2.Superseded]], None] = lambda _: None,
    ) -> None:
        self._stub = stub
        self._host_id = host_id
        self._incarnation = incarnation
        self._grpc_address = grpc_address
        self._data_address = data_address
        self._service_host = service_host
        self._labels = labels
        self._statuses = statuses
        self._superseded = superseded
        self.interval = DEFAULT_INTERVAL
        self.registered = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="registration")

    def _register_request(self) -> colo_pb2.RegisterAgentRequest:
        unavailable = {} if native.xen_built() else {"xen": "not built: xenctrl.h not found at build time"}
        return colo_pb2.RegisterAgentRequest(
            host_id=self._host_id,
            incarnation=self._incarnation,
            grpc_address=self._grpc_address,
            data_address=self._data_address,
            service_host=self._service_host,
            labels=self._labels,
            backends=["sim", "xen"] if native.xen_built() else ["sim"],
            unavailable_backends=unavailable,
            version=__version__,
            domains=self._statuses(),
        )

    async def _register(self) -> None:
        delay = 0.1
        while True:
            try:
                reply = await self._stub.RegisterAgent(self._register_request(), timeout=RPC_TIMEOUT)
                self.interval = seconds(reply.heartbeat_interval, DEFAULT_INTERVAL)
                if reply.superseded:
                    self._superseded(list(reply.superseded))
                self.registered.set()
                log.info("registered with the coordinator as %s", self._host_id)
                return
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "cannot register with the coordinator (%s): retrying in %.1f s", exc.code().name, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _run(self) -> None:
        await self._register()
        while True:
            await asyncio.sleep(self.interval)
            try:
                reply = await self._stub.Heartbeat(
                    colo_pb2.HeartbeatRequest(
                        host_id=self._host_id, incarnation=self._incarnation, domains=self._statuses()
                    ),
                    timeout=RPC_TIMEOUT,
                )
            except grpc.aio.AioRpcError as exc:
                log.debug("heartbeat failed: %s", exc.code().name)
                continue
            self.interval = seconds(reply.heartbeat_interval, self.interval)
            if reply.superseded:
                self._superseded(list(reply.superseded))
            if reply.reregister:
                self.registered.clear()
                await self._register()

    async def close(self) -> None:
        self._task.cancel()
