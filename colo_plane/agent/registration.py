"""Registers this agent with the coordinator and keeps its heartbeat.

Heartbeats go from a thread of their own on a channel of their own: a busy
event loop (a first boot's steps, a burst of RPCs, a host short of CPU)
must not make a live host look dead.  The domain statuses they carry are
taken on the event loop when it answers within half an interval, else the
last ones are sent again.  A loop that has not answered for WEDGED
seconds stops the heartbeats: such an agent cannot serve its commands, and
the coordinator must fail it over."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

import grpc

from colo_plane import __version__, native, serving
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.rpc import seconds

log = logging.getLogger(__name__)

RPC_TIMEOUT = 2.0
DEFAULT_INTERVAL = 0.2
WEDGED = 5.0  # seconds without an answer from the event loop after which heartbeats stop


class Registration:
    def __init__(
        self,
        stub: colo_pb2_grpc.CoordinatorStub,
        *,
        coordinator: str,
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
        self._coordinator = coordinator
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
        self._loop = asyncio.get_running_loop()
        self._reregister = asyncio.Event()
        self._beating = threading.Event()  # registered: the thread may heartbeat
        self._stop = threading.Event()
        self._last_statuses: list[colo_pb2.DomainStatus] = []
        self._loop_answered = time.monotonic()
        self._thread = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
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
                delay = min(delay * 2, 1.0)  # a coordinator that is back is found within a second

    async def _run(self) -> None:
        await self._register()
        self._beating.set()
        self._thread.start()
        while True:
            await self._reregister.wait()
            self._reregister.clear()
            self.registered.clear()
            await self._register()
            self._beating.set()

    # -- the heartbeat thread ------------------------------------------------------------

    async def _snapshot(self) -> list[colo_pb2.DomainStatus]:
        return self._statuses()

    def _current_statuses(self) -> list[colo_pb2.DomainStatus] | None:
        """The domains' statuses from the event loop, the last ones if it is busy,
        None if it has not answered for WEDGED seconds."""
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop)
        try:
            self._last_statuses = future.result(timeout=self.interval / 2)
            self._loop_answered = time.monotonic()
        except concurrent.futures.TimeoutError:
            future.cancel()
            if time.monotonic() - self._loop_answered > WEDGED:
                return None
        except (concurrent.futures.CancelledError, RuntimeError):  # the loop is closing
            return None
        return self._last_statuses

    def _heartbeats(self) -> None:
        channel = grpc.insecure_channel(self._coordinator, options=serving.CHANNEL_OPTIONS)
        stub = colo_pb2_grpc.CoordinatorStub(channel)
        wedged = False
        try:
            while not self._stop.wait(self.interval):
                if not self._beating.is_set():
                    continue
                statuses = self._current_statuses()
                if statuses is None:
                    if not wedged:
                        log.error("the event loop has not answered for %.0f s: heartbeats stop", WEDGED)
                    wedged = True
                    continue
                wedged = False
                self._beat(stub, statuses)
        finally:
            channel.close()

    def _beat(self, stub: colo_pb2_grpc.CoordinatorStub, statuses: list[colo_pb2.DomainStatus]) -> None:
        try:
            reply = stub.Heartbeat(
                colo_pb2.HeartbeatRequest(
                    host_id=self._host_id, incarnation=self._incarnation, domains=statuses
                ),
                timeout=RPC_TIMEOUT,
            )
        except grpc.RpcError as exc:
            log.debug("heartbeat failed: %s", exc.code().name if isinstance(exc, grpc.Call) else exc)
            return
        self.interval = seconds(reply.heartbeat_interval, self.interval)
        try:
            if reply.superseded:
                self._loop.call_soon_threadsafe(self._superseded, list(reply.superseded))
            if reply.reregister:
                self._beating.clear()
                self._loop.call_soon_threadsafe(self._reregister.set)
        except RuntimeError:  # the loop is closed: we are stopping
            self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, RPC_TIMEOUT + 1)
