"""Failure detection and the coordinator's periodic duties: agents whose
heartbeats stop are lost (their roles fail over), unprotected pairs are
re-protected when a host is free, checkpoint progress is written out."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRecord, AgentRegistry
from colo_plane.coordinator.roles import Roles
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import UNPROTECTED, PairMachine
from colo_plane.coordinator.store import StoreError

log = logging.getLogger(__name__)

REPROTECT_SCAN = 0.25  # seconds between scans for pairs to re-protect
REPROBE_EVERY = 1.0  # seconds between probes of an agent commands could not reach


class FailureDetector:
    def __init__(
        self, registry: AgentRegistry, machine: PairMachine, roles: Roles, settings: Settings
    ) -> None:
        self.registry = registry
        self.machine = machine
        self.roles = roles
        self.settings = settings
        # Fine enough that detection adds little to heartbeat_timeout.
        self.tick = max(0.01, min(settings.heartbeat_interval / 2, 0.05))
        self._task: asyncio.Task[None] | None = None
        self._probing: set[str] = set()
        self._last_reprobe: dict[str, float] = {}
        # A dead agent's port refuses at once; a hung host costs this much more.
        self.probe_timeout = max(0.05, min(0.25, settings.heartbeat_timeout / 2))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="failure-detector")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        last_scan = last_flush = 0.0
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            self.check_agents(now)
            if now - last_scan >= REPROTECT_SCAN:
                last_scan = now
                self.reprotect_scan(now)
            if now - last_flush >= self.settings.flush_interval:
                last_flush = now
                try:
                    self.machine.flush()
                except StoreError as exc:
                    log.error("cannot write checkpoint progress: %s", exc)

    def check_agents(self, now: float) -> None:
        for agent in list(self.registry.agents.values()):
            if not agent.alive or agent.host_id in self._probing:
                continue
            silent = now - agent.last_seen
            if silent > self.settings.heartbeat_timeout or self.registry.channel_failing(agent.host_id):
                # Late heartbeats, or commands that stopped reaching it (its heartbeats may
                # still arrive: a one-way partition is a failure of its own).
                self._probing.add(agent.host_id)
                self.roles.spawn(self._confirm_lost(agent, silent), f"probe-{agent.host_id}")
            elif not agent.reachable and now - self._last_reprobe.get(agent.host_id, 0.0) >= REPROBE_EVERY:
                self._last_reprobe[agent.host_id] = now
                self._probing.add(agent.host_id)
                self.roles.spawn(self._reprobe(agent), f"reprobe-{agent.host_id}")
        self.update_gauges()

    async def _reprobe(self, agent: AgentRecord) -> None:
        """An agent commands could not reach takes roles again once a call gets through."""
        try:
            await self.registry.client(agent.host_id).status(
                colo_pb2.GetStatusRequest(domain=""), timeout=self.probe_timeout
            )
        except grpc.aio.AioRpcError:
            return
        finally:
            self._probing.discard(agent.host_id)
        if not agent.reachable:
            agent.reachable = True
            log.warning("agent %s: commands reach it again; it may take roles", agent.host_id)

    def suspect(self, host: str) -> None:
        """A call to host failed as if it were down: confirm now rather than at the heartbeat timeout."""
        agent = self.registry.get(host)
        if agent is not None and agent.alive and host not in self._probing:
            self._probing.add(host)
            self.roles.spawn(self._confirm_lost(agent, time.monotonic() - agent.last_seen), f"probe-{host}")

    async def _confirm_lost(self, agent: AgentRecord, silent: float) -> None:
        """Late heartbeats are confirmed with one direct call before failing over: a
        dead agent refuses it at once, a busy one answers and keeps its roles."""
        late = silent > self.settings.heartbeat_timeout
        why = (
            f"no heartbeat for {silent:.2f} s (timeout {self.settings.heartbeat_timeout:.2f} s)"
            if late
            else "a call to it failed as if it were down"
        )
        try:
            await self.registry.client(agent.host_id).status(
                colo_pb2.GetStatusRequest(domain=""), timeout=self.probe_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if self.registry.agents.get(agent.host_id) is not agent or not agent.alive:
                return
            if (
                exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # refused would mean the process is gone
                and time.monotonic() - agent.last_seen <= self.settings.heartbeat_timeout
            ):
                # Its heartbeats arrive, but the coordinator cannot command it: it
                # can neither checkpoint nor release output, so its pairs are served
                # by no one.  Fail its roles over and give it none until a call
                # gets through again (docs/coordinator.md, "One-way partitions").
                agent.reachable = False
                metrics.COMMAND_PATH_LOST.inc()
                why = f"{why}; its heartbeats arrive but commands do not reach it (a one-way partition)"
            self.agent_lost(agent, f"{why}, and it does not answer ({exc.code().name})")
        else:
            if time.monotonic() - agent.last_seen > self.settings.heartbeat_timeout:
                log.warning("agent %s: %s, but it answers: kept alive", agent.host_id, why)
                agent.last_seen = time.monotonic()
        finally:
            self._probing.discard(agent.host_id)

    def update_gauges(self) -> None:
        agents = self.registry.agents.values()
        metrics.AGENTS_ALIVE.set(sum(1 for a in agents if a.alive))
        metrics.AGENTS_KNOWN.set(len(self.registry.agents))

    def agent_lost(self, agent: AgentRecord, why: str) -> None:
        agent.info.alive = False
        log.warning("agent %s lost: %s", agent.host_id, why)
        self.machine.emit(None, colo_pb2.EVENT_KIND_AGENT_LOST, host_id=agent.host_id, message=why)
        self.roles.host_lost(agent.host_id, why)

    def reprotect_scan(self, now: float) -> None:
        for rec in self.machine.pairs.values():
            if (
                rec.state == UNPROTECTED
                and now >= rec.reprotect_after
                and not rec.lock.locked()
                and self.registry.is_alive(rec.pair.primary_host)
            ):
                rec.reprotect_after = now + self.settings.reprotect_backoff
                self.roles.spawn(self.roles.reprotect(rec), f"reprotect-{rec.domain}")
