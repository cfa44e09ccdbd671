"""What each RPC an agent sends the coordinator means (RegisterAgent,
Heartbeat, RequestCheckpoint, ReportSyncPoint[s]): the host side of the
Coordinator service, apart from the operators' commands (core.py).  Raises
RpcError; the servicer turns it into a status."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from colo_plane import addresses
from colo_plane import spec as bounds
from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRegistry
from colo_plane.coordinator.checkpoints import CheckpointDriver
from colo_plane.coordinator.failure import FailureDetector
from colo_plane.coordinator.roles import Roles
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import (
    CHECKPOINTING,
    PROTECTED,
    STOPPED,
    UNPROTECTED,
    PairMachine,
    PairRecord,
    stamp,
)
from colo_plane.coordinator.store import Store
from colo_plane.rpc import duration, fail

log = logging.getLogger(__name__)


class HostCalls:
    """The agents' calls: registration and heartbeats (liveness, superseded
    roles, vanished domains), the fallback checkpoint request, sync points."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        registry: AgentRegistry,
        machine: PairMachine,
        detector: FailureDetector,
        roles: Roles,
        driver: CheckpointDriver,
        pair: Callable[[str], PairRecord],
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.machine = machine
        self.detector = detector
        self.roles = roles
        self.driver = driver
        self.pair = pair  # the pair of a domain, or NOT_FOUND (core.py's)
        self._gone: set[tuple[str, int, str]] = set()  # (domain, generation, host) being handled

    def _superseded(self, host: str, domains: list[colo_pb2.DomainStatus]) -> list[colo_pb2.Superseded]:
        """Domains the host reports that the coordinator gave to others since."""
        out = []
        for status in domains:
            rec = self.machine.pairs.get(status.domain)
            if rec is None or status.generation >= rec.generation:
                continue
            if host in rec.hosts() and rec.state != STOPPED:
                continue  # still its role; the new generation is on its way
            out.append(
                colo_pb2.Superseded(
                    domain=rec.domain,
                    generation=rec.generation,
                    epoch=rec.pair.epoch,
                    message=f"{rec.domain} moved on to generation {rec.generation} without {host}",
                )
            )
        return out

    async def register_agent(self, req: colo_pb2.RegisterAgentRequest) -> colo_pb2.RegisterAgentResponse:
        bounds.check_registration(req)
        for name in ("grpc_address", "data_address"):
            try:
                addresses.parse(getattr(req, name))
            except ValueError as exc:
                fail(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{name}: {exc}",
                    reason=colo_pb2.ERROR_REASON_INVALID_FIELD,
                )
        agent, previous = self.registry.register(req)
        restarted = bool(previous) and previous != req.incarnation
        self.detector.registered(agent, restarted=restarted)
        self.store.save_agent(agent.info)
        message = (
            "restarted (new incarnation): its roles are lost"
            if restarted
            else "re-registered"
            if previous
            else "registered"
        )
        log.info("agent %s %s (%s, labels %s)", req.host_id, message, req.grpc_address, dict(req.labels))
        self.machine.emit(None, colo_pb2.EVENT_KIND_AGENT_REGISTERED, host_id=req.host_id, message=message)
        held = {d.domain for d in req.domains}
        for rec in list(self.machine.pairs.values()):
            # Roles the agent should hold but does not: lost (it restarted).
            if (
                rec.state in (PROTECTED, CHECKPOINTING, UNPROTECTED)
                and req.host_id in rec.hosts()
                and rec.domain not in held
            ):
                why = f"agent {req.host_id} came back without {rec.domain} ({message})"
                if rec.pair.primary_host == req.host_id:
                    self.roles.spawn(
                        self.roles.primary_lost(rec, rec.generation, why), f"failover-{rec.domain}"
                    )
                else:
                    self.roles.spawn(
                        self.roles.drop_secondary(
                            rec, rec.generation, colo_pb2.FAILOVER_CAUSE_SECONDARY_LOST, why
                        ),
                        f"unprotect-{rec.domain}",
                    )
        self.detector.update_gauges()
        superseded = self._superseded(req.host_id, list(req.domains))
        for old in superseded:
            # A host that comes back with a role the pair has moved on from (it was
            # failed over while unreachable) is told to stand down and then released.
            log.warning("agent %s still holds %s: %s; releasing it", req.host_id, old.domain, old.message)
            self.roles.spawn(
                self.roles.release_superseded(req.host_id, old.domain, old.generation),
                f"release-{old.domain}-{req.host_id}",
            )
        return colo_pb2.RegisterAgentResponse(
            heartbeat_interval=duration(self.settings.heartbeat_interval),
            heartbeat_timeout=duration(self.settings.heartbeat_timeout),
            superseded=superseded,
        )

    async def heartbeat(self, req: colo_pb2.HeartbeatRequest) -> colo_pb2.HeartbeatResponse:
        bounds.check_host(req.host_id, field="host_id")
        out = colo_pb2.HeartbeatResponse(
            heartbeat_interval=duration(self.settings.heartbeat_interval),
            heartbeat_timeout=duration(self.settings.heartbeat_timeout),
        )
        agent = self.registry.get(req.host_id)
        if agent is None or agent.info.incarnation != req.incarnation:
            out.reregister = True
            return out
        if not agent.alive:
            # Declared lost: its roles moved on; it must register again to take new ones.
            out.reregister = True
            return out
        # Kept cheap: a heartbeat is the one call that must never wait (liveness.py).
        self.detector.heard(agent)
        stamp(agent.info.last_heartbeat)
        if req.domains or agent.domains:
            agent.domains = {d.domain: d for d in req.domains}
            for status in req.domains:
                if status.domain_gone:
                    self._domain_gone(req.host_id, status)
            out.superseded.extend(self._superseded(req.host_id, list(req.domains)))
        if not agent.registered:
            out.reregister = True  # a restarted coordinator: tell us what you hold
        return out

    def _domain_gone(self, host: str, status: colo_pb2.DomainStatus) -> None:
        """A live host says its domain of a pair vanished: that side holds no copy."""
        rec = self.machine.pairs.get(status.domain)
        if rec is None or rec.generation != status.generation or host not in rec.hosts():
            return
        key = (rec.domain, rec.generation, host)
        if key in self._gone:
            return  # being handled; later heartbeats say the same
        self._gone.add(key)
        task = self.roles.spawn(self.roles.domain_gone(rec, host, rec.generation), f"gone-{rec.domain}")
        task.add_done_callback(lambda _: self._gone.discard(key))

    async def request_checkpoint(
        self, req: colo_pb2.RequestCheckpointRequest
    ) -> colo_pb2.RequestCheckpointResponse:
        rec = self.pair(req.domain)
        bounds.check_request_checkpoint(req)
        if req.host_id != rec.pair.primary_host:
            fail(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{req.host_id or '(no host)'} is not the primary of {rec.domain} "
                f"({rec.pair.primary_host}): only the primary asks for checkpoints",
                reason=colo_pb2.ERROR_REASON_NOT_PAIR_HOST,
            )
        if req.generation < rec.generation:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"generation {req.generation} of {rec.domain} is superseded by {rec.generation}: stand down",
                reason=colo_pb2.ERROR_REASON_STALE_GENERATION,
            )
        if rec.state not in (PROTECTED, CHECKPOINTING) or rec.domain not in self.driver.drivers:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{rec.domain} is {colo_pb2.PairState.Name(rec.state)}: no checkpoint until it is PROTECTED",
                reason=colo_pb2.ERROR_REASON_WRONG_STATE,
            )
        epoch, coalesced = self.driver.arming.requested(rec, req)  # the fallback (arming.py)
        return colo_pb2.RequestCheckpointResponse(
            domain=rec.domain, generation=rec.generation, epoch=epoch, coalesced=coalesced
        )

    async def report_sync_point(
        self, req: colo_pb2.ReportSyncPointRequest
    ) -> colo_pb2.ReportSyncPointResponse:
        rec = self.pair(req.domain)
        bounds.check_report(req)
        if self.registry.get(req.host_id) is None:
            fail(
                grpc.StatusCode.NOT_FOUND,
                f"sync point of {rec.domain} from {req.host_id!r}, which is not a registered host: only "
                "the agents of the pair report its sync points (`colo agents` lists them)",
                reason=colo_pb2.ERROR_REASON_HOST_NOT_FOUND,
            )
        if req.generation < rec.generation:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sync point of {rec.domain} at generation {req.generation}, superseded by {rec.generation}: "
                "the reporter has been fenced and must stand down",
                reason=colo_pb2.ERROR_REASON_STALE_GENERATION,
            )
        if req.generation > rec.generation:
            # Nothing the coordinator handed out: a confused agent, or a store restored from an
            # older copy. Either way the report cannot stand for this pair's state.
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sync point of {rec.domain} at generation {req.generation}, which the coordinator never "
                f"issued (the pair is at {rec.generation}): release the domain on {req.host_id} "
                "(colo unprotect, then protect again)",
                reason=colo_pb2.ERROR_REASON_FUTURE_GENERATION,
            )
        if rec.state != STOPPED and req.host_id not in rec.hosts():
            fail(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{req.host_id} holds no role in {rec.domain} at generation {rec.generation} (primary "
                f"{rec.pair.primary_host or 'none'}, secondary {rec.pair.secondary_host or 'none'}): only "
                "the pair's agents report its sync points",
                reason=colo_pb2.ERROR_REASON_NOT_PAIR_HOST,
            )
        self.machine.emit(
            rec,
            colo_pb2.EVENT_KIND_SYNC_POINT,
            epoch=req.epoch,
            control_id=req.control_id,
            host_id=req.host_id,
            role=req.role,
            stats=req.stats,
            verify=req.verify,
            monotonic_ns=req.monotonic_ns,
        )
        return colo_pb2.ReportSyncPointResponse(generation=rec.generation)
