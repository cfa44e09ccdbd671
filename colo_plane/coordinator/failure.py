"""Failure detection and the coordinator's periodic duties: agents whose
heartbeats stop are lost (their roles fail over), unprotected pairs are
re-protected when a host is free, checkpoint progress is written out.

What counts as evidence (docs/coordinator.md, "Failure detection"):
facts fail a host over at once (its port refuses connections: no process
holds it); suspicion needs time: a silence longer than the agent's own
heartbeat history makes likely (liveness.py), or calls that keep failing
while its heartbeats still arrive (a one-way partition)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from colo_plane import addresses, metrics
from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRecord, AgentRegistry
from colo_plane.coordinator.liveness import FLAP_WINDOW, Flaps, HeartbeatHistory
from colo_plane.coordinator.roles import Roles
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import UNPROTECTED, PairMachine
from colo_plane.coordinator.store import StoreError

log = logging.getLogger(__name__)

REPROTECT_SCAN = 0.25  # seconds between scans for pairs to re-protect
REPROBE_EVERY = 1.0  # seconds between probes of an agent commands could not reach
CONFIRM_FACTOR = 1.5  # a silent agent whose probes time out is lost at this many timeouts of silence
COMMAND_CONFIRM = 1.0  # seconds (at least) of failing probes while heartbeats arrive: a one-way partition
CONNECT_CHECK = 0.2  # seconds a TCP connect to an agent's port may take to say "refused"


async def refuses(address: str, timeout: float = CONNECT_CHECK) -> bool:
    """True when nothing listens on address: the connection is refused.  A
    fact, unlike a call that times out (a busy host answers late)."""
    try:
        host, port = addresses.parse(address)
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return False


@dataclass(frozen=True)
class Probe:
    """One probe of a suspected agent, and what it settled."""

    code: grpc.StatusCode | None  # None: it answered
    now: float  # the detector's clock when the probe ended
    settled: bool = False  # nothing left to do: another record took its place, or it is lost (refused)


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
        self.histories: dict[str, HeartbeatHistory] = {}
        self.flaps: dict[str, Flaps] = {}
        self._ready: dict[str, bool] = {}  # the command channel was READY at the last tick
        # Time the coordinator's own event loop did not run (it was starved or
        # blocked): heartbeats waiting behind it are not late, so silences are
        # measured on a clock that stops while the coordinator does.
        self._stalled = 0.0
        self.clock: Callable[[], float] = time.monotonic

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="failure-detector")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the clock and the histories ---------------------------------------------------

    def awake(self, now: float | None = None) -> float:
        """Coordinator time without its own stalls."""
        return (self.clock() if now is None else now) - self._stalled

    def history(self, host: str) -> HeartbeatHistory:
        h = self.histories.get(host)
        if h is None:
            h = self.histories[host] = HeartbeatHistory(
                self.settings.heartbeat_interval, self.settings.heartbeat_timeout
            )
        return h

    def heard(self, agent: AgentRecord, now: float | None = None) -> None:
        """A heartbeat or a registration from agent."""
        now = self.clock() if now is None else now
        agent.last_seen = now
        self.history(agent.host_id).beat(self.awake(now))

    def timeout(self, host: str, now: float | None = None) -> float:
        """The silence after which host is suspected, as its history and flaps say."""
        now = self.clock() if now is None else now
        return self.history(host).timeout(self._flaps(host).factor(now))

    def silence(self, agent: AgentRecord, now: float | None = None) -> float:
        return self.awake(now) - self.history(agent.host_id).last

    def _flaps(self, host: str) -> Flaps:
        f = self.flaps.get(host)
        if f is None:
            f = self.flaps[host] = Flaps()
        return f

    def loaded(self, agents: list[AgentRecord], grace: float) -> None:
        """Agents from the store: silent from the end of the startup grace on."""
        start = self.awake() + grace
        for agent in agents:
            self.history(agent.host_id).last = start

    def registered(self, agent: AgentRecord, *, restarted: bool) -> None:
        """A (re-)registration: the command channel is dialled now, so a later
        drop of its connection is seen; a host lost before counts a flap."""
        now = self.clock()
        if restarted:
            self.history(agent.host_id).forget()
        self.heard(agent, now)
        flaps = self._flaps(agent.host_id)
        agent.flapping = flaps.flapping(now)
        if agent.flapping:
            log.warning(
                "agent %s is flapping (%d losses in %.0f s): it takes no new role for now and is "
                "suspected only after %.2f s of silence",
                agent.host_id,
                flaps.count(now),
                FLAP_WINDOW,
                self.timeout(agent.host_id, now),
            )
        metrics.AGENT_FLAPPING.labels(agent.host_id).set(1 if agent.flapping else 0)
        self._ready.pop(agent.host_id, None)
        self.registry.connect(agent.host_id)

    # -- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        last_scan = last_flush = 0.0
        before = self.clock()
        while True:
            await asyncio.sleep(self.tick)
            now = self.clock()
            late = now - before - self.tick
            if late > self.tick:
                self._stalled += late  # the loop (or the process) did not run meanwhile
            before = now
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
            host = agent.host_id
            if not agent.alive or host in self._probing:
                continue
            state = self.registry.channel_state(host)
            was_ready = self._ready.get(host, False)
            self._ready[host] = state == grpc.ChannelConnectivity.READY
            silence, timeout = self.silence(agent, now), self.timeout(host, now)
            if silence > timeout:
                self._spawn(self._confirm_silent(agent, timeout), host)
            elif was_ready and state != grpc.ChannelConnectivity.READY:
                # Its connection closed: a process that died closes its sockets, and then its
                # port refuses.  Checked now rather than at the end of a silence.
                self._spawn(self._check_refused(agent), host)
            elif state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                # Keepalive or connect failed: commands may not reach it, though its
                # heartbeats arrive (a one-way partition is a failure of its own).
                self._spawn(self._confirm_command_path(agent, "its command channel failed"), host)
            elif not agent.reachable and now - self._last_reprobe.get(host, 0.0) >= REPROBE_EVERY:
                self._last_reprobe[host] = now
                self._spawn(self._reprobe(agent), host)
        self.update_gauges()

    def _spawn(self, coro: Coroutine[Any, Any, None], host: str) -> None:
        self._probing.add(host)
        task = self.roles.spawn(coro, f"probe-{host}")
        task.add_done_callback(lambda _: self._probing.discard(host))

    # -- probes -------------------------------------------------------------------------

    async def _probe(self, agent: AgentRecord) -> grpc.StatusCode | None:
        """One GetStatus: None if it answered, else why not."""
        try:
            await self.registry.client(agent.host_id).status(
                colo_pb2.GetStatusRequest(domain=""), timeout=self.probe_timeout
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        except KeyError:
            return grpc.StatusCode.NOT_FOUND
        return None

    def _current(self, agent: AgentRecord) -> bool:
        return self.registry.agents.get(agent.host_id) is agent and agent.alive

    async def _check_refused(self, agent: AgentRecord) -> None:
        if await refuses(agent.info.grpc_address) and self._current(agent):
            self.agent_lost(agent, "its connection closed and its port refuses connections", "refused")

    async def _reprobe(self, agent: AgentRecord) -> None:
        """An agent commands could not reach takes roles again once a call gets through."""
        if await self._probe(agent) is None and not agent.reachable:
            agent.reachable = True
            log.warning("agent %s: commands reach it again; it may take roles", agent.host_id)

    def suspect(self, host: str) -> None:
        """A call to host failed as if it were down: check now rather than at the end of a silence."""
        agent = self.registry.get(host)
        if agent is not None and agent.alive and host not in self._probing:
            self._spawn(self._confirm_command_path(agent, "a call to it failed as if it were down"), host)

    async def _probe_suspect(self, agent: AgentRecord, why: Callable[[float], str]) -> Probe:
        """The step both confirmations repeat: one GetStatus; if it failed (not
        by a timeout) and the agent is still the current record, whether its
        port refuses, a fact that makes it lost here at once (why(now) says
        what made it suspect)."""
        code = await self._probe(agent)
        probe = Probe(code, self.clock())
        if code is None:
            return probe
        if not self._current(agent):
            return dataclasses.replace(probe, settled=True)
        if code != grpc.StatusCode.DEADLINE_EXCEEDED and await refuses(agent.info.grpc_address):
            self.agent_lost(agent, f"{why(probe.now)}, and its port refuses connections", "refused")
            return dataclasses.replace(probe, settled=True)
        return probe

    def _no_heartbeat(self, agent: AgentRecord, timeout: float, now: float) -> str:
        return f"no heartbeat for {self.silence(agent, now):.2f} s (its timeout {timeout:.2f} s)"

    async def _confirm_silent(self, agent: AgentRecord, timeout: float) -> None:
        """A silence beyond the agent's timeout.  It answers: kept, and the gap
        joins its history.  Its port refuses: lost.  Its probes time out: lost
        once the silence reaches CONFIRM_FACTOR timeouts (a hung host)."""
        host = agent.host_id
        while self._current(agent):
            probe = await self._probe_suspect(agent, lambda now: self._no_heartbeat(agent, timeout, now))
            if probe.settled:
                return
            silence, why = self.silence(agent, probe.now), self._no_heartbeat(agent, timeout, probe.now)
            if probe.code is None:
                log.warning("agent %s: %s, but it answers: kept alive", host, why)
                self.heard(agent)
                return
            if silence <= timeout:
                return  # its heartbeats are back
            if silence >= timeout * CONFIRM_FACTOR:
                self.agent_lost(agent, f"{why}, and it does not answer ({probe.code.name})", "silent")
                return
            await asyncio.sleep(min(self.probe_timeout, 0.05))  # a fast failure must not spin

    async def _confirm_command_path(self, agent: AgentRecord, why: str) -> None:
        """Calls to the agent fail while its heartbeats may still arrive.  Lost
        when its port refuses, when it also falls silent, or when calls keep
        failing for COMMAND_CONFIRM (at least twice its timeout): it can then
        neither checkpoint nor release output, so its pairs are served by no
        one (docs/coordinator.md, "Failure detection")."""
        host = agent.host_id
        started = self.clock()
        while self._current(agent):
            probe = await self._probe_suspect(agent, lambda _: why)
            if probe.settled:
                return
            if probe.code is None:
                if not agent.reachable:
                    agent.reachable = True
                return
            timeout = self.timeout(host)
            silence = self.silence(agent)
            if silence > timeout * CONFIRM_FACTOR:
                self.agent_lost(
                    agent, f"{why}; no heartbeat for {silence:.2f} s and it does not answer", "silent"
                )
                return
            failing = self.clock() - started
            if failing >= max(COMMAND_CONFIRM, 2 * timeout):
                # Its heartbeats arrive, but the coordinator cannot command it.  It takes
                # no role until a call gets through again.
                agent.reachable = False
                metrics.COMMAND_PATH_LOST.inc()
                self.agent_lost(
                    agent,
                    f"{why}; its heartbeats arrive but for {failing:.2f} s no command reached it "
                    f"({probe.code.name}): a one-way partition",
                    "command_path",
                )
                return
            await asyncio.sleep(min(self.probe_timeout, 0.1))

    # -- outcomes -------------------------------------------------------------------------

    def update_gauges(self) -> None:
        now = self.clock()
        agents = self.registry.agents.values()
        metrics.AGENTS_ALIVE.set(sum(1 for a in agents if a.alive))
        metrics.AGENTS_KNOWN.set(len(self.registry.agents))
        for agent in agents:
            flapping = self._flaps(agent.host_id).flapping(now)
            if flapping != agent.flapping:
                agent.flapping = flapping
                log.warning("agent %s %s", agent.host_id, "is flapping" if flapping else "stopped flapping")
            metrics.AGENT_FLAPPING.labels(agent.host_id).set(1 if flapping else 0)
            metrics.AGENT_TIMEOUT.labels(agent.host_id).set(self.timeout(agent.host_id, now))

    def agent_lost(self, agent: AgentRecord, why: str, reason: str = "silent") -> None:
        now = self.clock()
        agent.info.alive = False
        flaps = self._flaps(agent.host_id)
        flaps.lost(now)
        metrics.AGENTS_LOST.labels(reason).inc()
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
