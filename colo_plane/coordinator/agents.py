"""The agents the coordinator knows: registration, liveness, and a client
for each one's Agent service where every call carries a deadline."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import cast

import grpc

from colo_plane import serving
from colo_plane._proto import colo_pb2, colo_pb2_grpc

log = logging.getLogger(__name__)


class HostNotRegistered(Exception):
    """No agent of that host id ever registered with this coordinator."""

    def __init__(self, host_id: str) -> None:
        super().__init__(f"host {host_id or '(none)'} is not registered")
        self.host_id = host_id


@dataclass
class AgentRecord:
    info: colo_pb2.AgentInfo  # roles are filled in when listed
    last_seen: float = 0.0  # time.monotonic() of the last heartbeat or registration
    registered: bool = False  # registered with this coordinator process (not just loaded from the store)
    # Its Agent API answers: False once a command failed to reach it while its
    # heartbeats arrived (a one-way partition), until a probe gets through.
    reachable: bool = True
    # Lost and back too often lately (liveness.Flaps): it takes no new role.
    flapping: bool = False
    domains: dict[str, colo_pb2.DomainStatus] = field(default_factory=dict)  # as last reported

    @property
    def host_id(self) -> str:
        return self.info.host_id

    @property
    def alive(self) -> bool:
        return self.info.alive


class AgentClient:
    """The Agent service of one host.  Every call takes an explicit deadline."""

    def __init__(self, stub: colo_pb2_grpc.AgentStub, host_id: str) -> None:
        self._stub = stub
        self.host_id = host_id

    async def prepare_secondary(
        self, req: colo_pb2.PrepareSecondaryRequest, *, timeout: float
    ) -> colo_pb2.PrepareSecondaryResponse:
        return cast(
            colo_pb2.PrepareSecondaryResponse, await self._stub.PrepareSecondary(req, timeout=timeout)
        )

    async def start_primary(
        self, req: colo_pb2.StartPrimaryRequest, *, timeout: float
    ) -> colo_pb2.StartPrimaryResponse:
        return cast(colo_pb2.StartPrimaryResponse, await self._stub.StartPrimary(req, timeout=timeout))

    async def checkpoint(
        self, req: colo_pb2.AgentCheckpointRequest, *, timeout: float
    ) -> colo_pb2.AgentCheckpointResponse:
        return cast(colo_pb2.AgentCheckpointResponse, await self._stub.Checkpoint(req, timeout=timeout))

    async def promote(self, req: colo_pb2.PromoteRequest, *, timeout: float) -> colo_pb2.PromoteResponse:
        return cast(colo_pb2.PromoteResponse, await self._stub.Promote(req, timeout=timeout))

    async def set_unprotected(
        self, req: colo_pb2.SetUnprotectedRequest, *, timeout: float
    ) -> colo_pb2.SetUnprotectedResponse:
        return cast(colo_pb2.SetUnprotectedResponse, await self._stub.SetUnprotected(req, timeout=timeout))

    async def release(self, req: colo_pb2.ReleaseRequest, *, timeout: float) -> colo_pb2.ReleaseResponse:
        return cast(colo_pb2.ReleaseResponse, await self._stub.Release(req, timeout=timeout))

    async def status(self, req: colo_pb2.GetStatusRequest, *, timeout: float) -> colo_pb2.GetStatusResponse:
        return cast(colo_pb2.GetStatusResponse, await self._stub.GetStatus(req, timeout=timeout))


class AgentRegistry:
    def __init__(self) -> None:
        self.agents: dict[str, AgentRecord] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._clients: dict[tuple[str, str], AgentClient] = {}

    def get(self, host_id: str) -> AgentRecord | None:
        return self.agents.get(host_id)

    def is_alive(self, host_id: str) -> bool:
        rec = self.agents.get(host_id)
        return rec is not None and rec.alive

    def channel_state(self, host_id: str) -> grpc.ChannelConnectivity | None:
        """The state of the channel to host's Agent API (None: no channel yet)."""
        rec = self.agents.get(host_id)
        channel = self._channels.get(rec.info.grpc_address) if rec is not None else None
        return channel.get_state(try_to_connect=False) if channel is not None else None

    def connect(self, host_id: str) -> None:
        """Dials host's Agent API now (a channel connects at its first call otherwise)."""
        self.client(host_id)
        self._channels[self.agents[host_id].info.grpc_address].get_state(try_to_connect=True)

    def client(self, host_id: str) -> AgentClient:
        """A client for host_id's Agent service (channels are shared per address)."""
        agent = self.agents.get(host_id)
        if agent is None:
            raise HostNotRegistered(host_id)
        address = agent.info.grpc_address
        client = self._clients.get((host_id, address))
        if client is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = grpc.aio.insecure_channel(address, options=serving.COMMAND_CHANNEL_OPTIONS)
                self._channels[address] = channel
            client = AgentClient(colo_pb2_grpc.AgentStub(channel), host_id)
            self._clients[(host_id, address)] = client
        return client

    def load(self, infos: list[colo_pb2.AgentInfo], grace_until: float) -> None:
        """Agents from the store: alive until grace_until unless they heartbeat."""
        for info in infos:
            info.alive = True
            self.agents[info.host_id] = AgentRecord(info, last_seen=grace_until)

    def register(self, req: colo_pb2.RegisterAgentRequest) -> tuple[AgentRecord, str]:
        """Records a registration; returns the record and the incarnation it replaces ('' if none)."""
        old = self.agents.get(req.host_id)
        previous = old.info.incarnation if old is not None else ""
        info = colo_pb2.AgentInfo(
            host_id=req.host_id,
            incarnation=req.incarnation,
            grpc_address=req.grpc_address,
            data_address=req.data_address,
            service_host=req.service_host,
            labels=req.labels,
            backends=req.backends,
            capacity=req.capacity,
            alive=True,
            version=req.version,
            unavailable_backends=req.unavailable_backends,
            draining=old.info.draining if old is not None else False,
        )
        info.registered_at.GetCurrentTime()
        info.last_heartbeat.GetCurrentTime()
        rec = AgentRecord(
            info,
            last_seen=time.monotonic(),
            registered=True,
            domains={d.domain: d for d in req.domains},
            reachable=old.reachable if old is not None else True,  # a registration proves only one direction
            flapping=old.flapping if old is not None else False,
        )
        self.agents[req.host_id] = rec
        return rec, previous

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._clients.clear()
