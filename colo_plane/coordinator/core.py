"""What each operator's Coordinator RPC means (protect, unprotect, pairs,
checkpoint, failover, drain, agents, watch): argument checks with messages
that say what to do, then the state machine, the checkpoint driver and the
role changes; the agents' own RPCs are hosts.py's.  Raises RpcError; the
servicer turns it into a status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from colo_plane import spec as bounds
from colo_plane._proto import colo_pb2
from colo_plane.coordinator import deadlines
from colo_plane.coordinator.agents import AgentRecord, AgentRegistry
from colo_plane.coordinator.checkpoints import CheckpointDriver, CheckpointError
from colo_plane.coordinator.events import EventBus
from colo_plane.coordinator.failure import FailureDetector
from colo_plane.coordinator.hosts import HostCalls
from colo_plane.coordinator.roles import Roles
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import (
    CHECKPOINTING,
    FAILING_OVER,
    LOST,
    PROTECTED,
    STOPPED,
    SYNCING,
    UNPROTECTED,
    PairMachine,
    PairRecord,
)
from colo_plane.coordinator.store import Store
from colo_plane.rpc import RpcError, fail

log = logging.getLogger(__name__)


def _copy(pair: colo_pb2.Pair) -> colo_pb2.Pair:
    out = colo_pb2.Pair()
    out.CopyFrom(pair)
    return out


class Coordinator:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.settings = settings
        self.store = store
        self.bus = EventBus()
        self.registry = AgentRegistry()
        self.machine = PairMachine(store, self.bus)
        self.driver = CheckpointDriver(self.machine, self.registry, settings, self._secondary_trouble)
        self.roles = Roles(self.machine, self.registry, self.driver, settings)
        self.detector = FailureDetector(self.registry, self.machine, self.roles, settings)
        self.driver.on_unreachable = self.detector.suspect
        self.hosts = HostCalls(
            settings=settings,
            store=store,
            registry=self.registry,
            machine=self.machine,
            detector=self.detector,
            roles=self.roles,
            driver=self.driver,
            pair=self._pair,
        )

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Resumes every stored pair: no new first boot, generations carry on."""
        grace_until = time.monotonic() + self.settings.startup_grace
        self.registry.load(self.store.load_agents(), grace_until)
        self.detector.loaded(list(self.registry.agents.values()), self.settings.startup_grace)
        for rec in self.machine.load():
            if rec.state == SYNCING:
                # The first boot's answer died with the previous process: redo it.
                rec.pair.secondary_host = ""
                self.machine.first_boot_failed(rec, "the coordinator restarted during the first boot")
                rec.reprotect_after = grace_until
            elif rec.state == FAILING_OVER:
                # The generation stored with FAILING_OVER already fences the old primary.
                self.roles.spawn(self.roles.resume_failover(rec), f"failover-{rec.domain}")
            elif rec.state == UNPROTECTED:
                rec.reprotect_after = grace_until
            if rec.state in (PROTECTED, CHECKPOINTING):
                self.driver.start(rec)
        resumed = sum(1 for r in self.machine.pairs.values() if r.state == PROTECTED)
        log.info(
            "resumed %d pair(s) (%d protected) and %d agent(s) from the store",
            len(self.machine.pairs),
            resumed,
            len(self.registry.agents),
        )
        self.detector.update_gauges()
        self.detector.start()

    async def close(self) -> None:
        await self.detector.close()
        await self.driver.close()
        await self.roles.close()
        self.machine.flush()
        await self.registry.close()

    def _secondary_trouble(self, rec: PairRecord, generation: int, why: str) -> None:
        self.roles.spawn(self.roles.secondary_trouble(rec, generation, why), f"trouble-{rec.domain}")

    # -- lookups ------------------------------------------------------------------------

    def _pair(self, domain: str) -> PairRecord:
        rec = self.machine.pairs.get(bounds.check_domain(domain))
        if rec is None:
            fail(
                grpc.StatusCode.NOT_FOUND,
                f"no pair named {domain!r}: `colo pairs` lists them; `colo protect` creates one",
                reason=colo_pb2.ERROR_REASON_PAIR_NOT_FOUND,
            )
        return rec

    def _agent(self, host_id: str, what: str) -> AgentRecord:
        agent = self.registry.get(host_id)
        if agent is None:
            known = ", ".join(sorted(self.registry.agents)) or "none yet"
            fail(
                grpc.StatusCode.NOT_FOUND,
                f"{what} {host_id!r} is not a known host (registered agents: {known}); start `colo agent "
                f"--host-id {host_id}` there, or pick one from `colo agents`",
                reason=colo_pb2.ERROR_REASON_HOST_NOT_FOUND,
            )
        return agent

    def _usable(self, agent: AgentRecord, what: str, backend: str) -> None:
        if not agent.alive:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} {agent.host_id} is not alive (no heartbeat): restart its agent or choose another "
                "host",
                reason=colo_pb2.ERROR_REASON_HOST_UNUSABLE,
            )
        if agent.info.draining:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} {agent.host_id} is draining and takes no new roles: `colo drain {agent.host_id} "
                "--cancel` or choose another host",
                reason=colo_pb2.ERROR_REASON_HOST_UNUSABLE,
            )
        if backend not in agent.info.backends:
            why = agent.info.unavailable_backends.get(backend, "not offered")
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} {agent.host_id} cannot run backend {backend} ({why}): choose a host that lists it "
                "in `colo agents`",
                reason=colo_pb2.ERROR_REASON_HOST_UNUSABLE,
            )

    def _roles_of(self, host: str) -> list[colo_pb2.HeldRole]:
        out = []
        for rec in self.machine.pairs.values():
            if rec.state == STOPPED:
                continue
            for role, holder in (
                (colo_pb2.ROLE_PRIMARY, rec.pair.primary_host),
                (colo_pb2.ROLE_SECONDARY, rec.pair.secondary_host),
            ):
                if holder == host:
                    out.append(
                        colo_pb2.HeldRole(
                            domain=rec.domain, generation=rec.generation, epoch=rec.pair.epoch, role=role
                        )
                    )
        return out

    # -- client side -------------------------------------------------------------------

    async def protect(self, req: colo_pb2.ProtectDomainRequest) -> colo_pb2.ProtectDomainResponse:
        bounds.check_protect(req)  # the spec, and the hosts' names
        spec = req.spec
        if not req.primary_host:
            fail(
                grpc.StatusCode.INVALID_ARGUMENT,
                "primary_host is required: the host that runs the domain",
                reason=colo_pb2.ERROR_REASON_INVALID_FIELD,
            )
        if req.primary_host == req.secondary_host:
            fail(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"primary and secondary are both {req.primary_host}: a pair needs two hosts (leave the "
                "secondary empty to have one placed)",
                reason=colo_pb2.ERROR_REASON_INVALID_FIELD,
            )
        existing = self.machine.pairs.get(spec.domain)
        if existing is not None and existing.state != STOPPED:
            fail(
                grpc.StatusCode.ALREADY_EXISTS,
                f"{spec.domain} is already protected ({colo_pb2.PairState.Name(existing.state)}, primary "
                f"{existing.pair.primary_host}): `colo unprotect {spec.domain}` first, or use another name",
                reason=colo_pb2.ERROR_REASON_PAIR_EXISTS,
            )
        backend = spec.WhichOneof("backend") or "sim"
        primary = self._agent(req.primary_host, "primary host")
        self._usable(primary, "primary host", backend)
        if req.secondary_host:
            self._usable(self._agent(req.secondary_host, "secondary host"), "secondary host", backend)
        if existing is not None and existing.lock.locked():
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{spec.domain} is still being stopped: retry in a moment",
                reason=colo_pb2.ERROR_REASON_WRONG_STATE,
            )
        rec = self.machine.create(spec, req.primary_host)
        if req.secondary_host:
            secondary, why = req.secondary_host, "asked for"
        else:
            choice = self.roles.place(rec)
            if choice is None:
                fail(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no host can take the secondary of {spec.domain}: every other agent is dead, draining, "
                    f"full or lacks backend {backend}; start another agent (`colo agents` shows them)",
                    reason=colo_pb2.ERROR_REASON_NO_PLACEMENT,
                )
            secondary, why = choice.host_id, choice.why
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = self.roles.spawn(self.roles.protect(rec, secondary, why, started), f"protect-{spec.domain}")
        await started
        if req.wait:
            await asyncio.shield(task)
            await self._wait_protected(rec, deadlines.first_boot_budget(spec, self.settings))
        return colo_pb2.ProtectDomainResponse(pair=_copy(rec.pair))

    async def _wait_protected(self, rec: PairRecord, budget: float) -> None:
        """protect --wait: follows the pair through the coordinator's own retries
        of a failed first boot, up to budget (the guest's size says how long a
        first boot may take), rather than giving up at the first failure."""
        give_up = time.monotonic() + budget
        while rec.state != PROTECTED and time.monotonic() < give_up:
            if rec.state in (STOPPED, LOST) or not self.registry.is_alive(rec.pair.primary_host):
                break
            await asyncio.sleep(0.1)
        if rec.state == PROTECTED:
            return
        what = deadlines.describe(rec.pair.spec)
        fail(
            grpc.StatusCode.UNAVAILABLE,
            f"{rec.domain} is {colo_pb2.PairState.Name(rec.state).removeprefix('PAIR_STATE_')}, not "
            f"PROTECTED, after {budget:.0f} s (the most a first boot of {what} should take): "
            f"{rec.pair.last_error or 'the first boot did not complete'}.  The guest runs on "
            f"{rec.pair.primary_host or 'no host'} without a secondary; the coordinator retries the first "
            f"boot every {self.settings.reprotect_backoff:.0f} s on its own: follow it with `colo watch "
            f"--domain {rec.domain}` or `colo pair {rec.domain}`",
            reason=colo_pb2.ERROR_REASON_FIRST_BOOT_FAILED,
        )

    async def unprotect(self, req: colo_pb2.UnprotectDomainRequest) -> colo_pb2.UnprotectDomainResponse:
        rec = self._pair(req.domain)
        await self.roles.unprotect(rec, stop_domain=req.stop_domain)
        return colo_pb2.UnprotectDomainResponse(pair=_copy(rec.pair))

    async def get_pair(self, req: colo_pb2.GetPairRequest) -> colo_pb2.GetPairResponse:
        return colo_pb2.GetPairResponse(pair=_copy(self._pair(req.domain).pair))

    async def list_pairs(self, req: colo_pb2.ListPairsRequest) -> colo_pb2.ListPairsResponse:
        bounds.check_list_pairs(req)
        states = set(req.states)
        out = []
        for domain in sorted(self.machine.pairs):
            pair = self.machine.pairs[domain].pair
            if states:
                if pair.state not in states:
                    continue
            elif pair.state == STOPPED and not req.include_stopped:
                continue
            if req.host_id and req.host_id not in (pair.primary_host, pair.secondary_host):
                continue
            out.append(_copy(pair))
        return colo_pb2.ListPairsResponse(pairs=out)

    async def checkpoint(
        self, req: colo_pb2.CoordinatorCheckpointRequest
    ) -> colo_pb2.CoordinatorCheckpointResponse:
        rec = self._pair(req.domain)
        if rec.state not in (PROTECTED, CHECKPOINTING) or rec.domain not in self.driver.drivers:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{rec.domain} is {colo_pb2.PairState.Name(rec.state)}: checkpoints need a PROTECTED pair; "
                "wait for it (colo pair) and retry",
                reason=colo_pb2.ERROR_REASON_WRONG_STATE,
            )
        epoch, coalesced, future = self.driver.want(
            rec.domain, colo_pb2.CHECKPOINT_TRIGGER_MANUAL, wait=req.wait
        )
        out = colo_pb2.CoordinatorCheckpointResponse(
            domain=rec.domain, generation=rec.generation, epoch=epoch, coalesced=coalesced
        )
        if future is not None:
            try:
                resp = await future
            except CheckpointError as exc:
                fail(
                    exc.code if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED else grpc.StatusCode.ABORTED,
                    exc.message,
                    reason=colo_pb2.ERROR_REASON_CHECKPOINT_FAILED,
                )
            out.epoch, out.generation = resp.epoch, resp.generation
            out.stats.CopyFrom(resp.stats)
            out.verify.CopyFrom(resp.verify)
        return out

    async def failover(self, req: colo_pb2.FailoverRequest) -> colo_pb2.FailoverResponse:
        bounds.check_failover(req)
        rec = self._pair(req.domain)
        if req.new_secondary_host:
            agent = self._agent(req.new_secondary_host, "new secondary host")
            self._usable(agent, "new secondary host", rec.pair.spec.WhichOneof("backend") or "sim")
            if req.new_secondary_host == rec.pair.secondary_host:
                fail(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{req.new_secondary_host} becomes the primary of {rec.domain}: it cannot also be its "
                    "secondary; leave new_secondary_host empty to swap roles",
                    reason=colo_pb2.ERROR_REASON_INVALID_FIELD,
                )
        if rec.state not in (PROTECTED, CHECKPOINTING):
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{rec.domain} is {colo_pb2.PairState.Name(rec.state)}, not PROTECTED: there is no secondary "
                "with a whole copy to switch to; wait for PROTECTED (colo pair) and retry",
                reason=colo_pb2.ERROR_REASON_WRONG_STATE,
            )
        pair = await self.roles.switchover(
            rec,
            colo_pb2.FAILOVER_CAUSE_PLANNED,
            new_secondary=req.new_secondary_host,
            expected_generation=req.expected_generation,
        )
        return colo_pb2.FailoverResponse(pair=pair)

    async def drain(self, req: colo_pb2.DrainHostRequest) -> colo_pb2.DrainHostResponse:
        agent = self._agent(bounds.check_host(req.host_id, field="host_id"), "host")
        if agent.info.draining != (not req.cancel):
            agent.info.draining = not req.cancel
            self.store.save_agent(agent.info)
            what = "stopped draining" if req.cancel else "draining: no new roles, moving every role off"
            log.warning("host %s %s", req.host_id, what)
            self.machine.emit(None, colo_pb2.EVENT_KIND_HOST_DRAINING, host_id=req.host_id, message=what)
        if req.cancel:
            return colo_pb2.DrainHostResponse(
                host_id=req.host_id, remaining_roles=len(self._roles_of(req.host_id))
            )
        moves: list[colo_pb2.DrainMove] = []
        tasks: list[asyncio.Task[None]] = []
        for rec in list(self.machine.pairs.values()):
            if rec.state == STOPPED:
                continue
            if rec.pair.primary_host == req.host_id:
                move = colo_pb2.DrainMove(
                    domain=rec.domain,
                    generation=rec.generation,
                    epoch=rec.pair.epoch,
                    role=colo_pb2.ROLE_PRIMARY,
                    action=colo_pb2.DRAIN_ACTION_SWITCHOVER,
                    to_host=rec.pair.secondary_host,
                )
                tasks.append(
                    self.roles.spawn(self._drain_primary(rec, move, req.host_id), f"drain-{rec.domain}")
                )
            elif rec.pair.secondary_host == req.host_id:
                choice = self.roles.place(rec, exclude=(req.host_id,))
                action = (
                    colo_pb2.DRAIN_ACTION_REPROTECT_ELSEWHERE
                    if choice is not None
                    else colo_pb2.DRAIN_ACTION_UNPROTECT
                )
                move = colo_pb2.DrainMove(
                    domain=rec.domain,
                    generation=rec.generation,
                    epoch=rec.pair.epoch,
                    role=colo_pb2.ROLE_SECONDARY,
                    action=action,
                    to_host=choice.host_id if choice is not None else "",
                )
                tasks.append(self.roles.spawn(self._drain_secondary(rec, move), f"drain-{rec.domain}"))
            else:
                continue
            moves.append(move)
        if req.wait and tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        return colo_pb2.DrainHostResponse(
            host_id=req.host_id, moves=moves, remaining_roles=len(self._roles_of(req.host_id))
        )

    async def _drain_primary(self, rec: PairRecord, move: colo_pb2.DrainMove, host: str) -> None:
        """Switchover, once the pair is PROTECTED (a first boot or checkpoint may be in flight)."""
        deadline = time.monotonic() + self.settings.first_boot_timeout
        while rec.state in (SYNCING, CHECKPOINTING, FAILING_OVER) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if rec.pair.primary_host != host:
            move.done = True  # moved already (a failover got there first)
        elif rec.state != PROTECTED:
            move.error = (
                f"{rec.domain} runs unprotected on the draining host: there is no secondary to "
                "switch to; unprotect it, or drain again once it is re-protected"
            )
            return
        else:
            try:
                await self.roles.switchover(rec, colo_pb2.FAILOVER_CAUSE_DRAIN)
            except RpcError as exc:
                move.error = exc.message
                return
        move.generation, move.epoch, move.done = rec.generation, rec.pair.epoch, True
        move.to_host = rec.pair.primary_host

    async def _drain_secondary(self, rec: PairRecord, move: colo_pb2.DrainMove) -> None:
        await self.roles.drop_secondary(
            rec,
            rec.generation,
            colo_pb2.FAILOVER_CAUSE_DRAIN,
            f"host {move.to_host or '(none)'} takes over from a draining host",
        )
        move.generation, move.epoch, move.done = rec.generation, rec.pair.epoch, True

    async def list_agents(self, req: colo_pb2.ListAgentsRequest) -> colo_pb2.ListAgentsResponse:
        out = []
        for host in sorted(self.registry.agents):
            agent = self.registry.agents[host]
            if req.alive_only and not agent.alive:
                continue
            info = colo_pb2.AgentInfo()
            info.CopyFrom(agent.info)
            info.roles.extend(self._roles_of(host))
            out.append(info)
        return colo_pb2.ListAgentsResponse(agents=out)

    async def watch(self, req: colo_pb2.WatchEventsRequest) -> AsyncIterator[colo_pb2.Event]:
        bounds.check_watch(req)
        async for event in self.bus.watch(
            domain=req.domain, kinds=req.kinds, history=req.history, after_sequence=req.after_sequence
        ):
            yield event
