"""Role changes, each the sequence of Agent calls docs/design.md §6 asks
for: first boot (protect, re-protect), failover when the primary is lost,
dropping a lost or unhealthy secondary, planned switchover, unprotect.
One role change at a time per pair (PairRecord.lock); each one re-checks
the generation it was started for, so a late one does nothing.

Before a role change gives up a side, the side that is to carry on is
asked whether it still holds the guest (copy_on): the coordinator never
releases the last copy of a pair, never re-protects from a domain that is
gone, and says LOST when no host holds the guest (docs/coordinator.md,
"Which side holds the copy")."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

import grpc

from colo_plane._proto import colo_pb2
from colo_plane.coordinator import deadlines, placement
from colo_plane.coordinator.agents import AgentRegistry, HostNotRegistered
from colo_plane.coordinator.checkpoints import CheckpointDriver, CheckpointError
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import (
    CHECKPOINTING,
    FAILING_OVER,
    PROTECTED,
    STOPPED,
    SYNCING,
    UNPROTECTED,
    PairMachine,
    PairRecord,
    cause_name,
)
from colo_plane.rpc import duration, fail, reason_of

log = logging.getLogger(__name__)

SECRET_BYTES = 32
PRIMARY_LOST = colo_pb2.FAILOVER_CAUSE_PRIMARY_LOST
SECONDARY_LOST = colo_pb2.FAILOVER_CAUSE_SECONDARY_LOST
SECONDARY_UNHEALTHY = colo_pb2.FAILOVER_CAUSE_SECONDARY_UNHEALTHY
PRIMARY_DOMAIN_GONE = colo_pb2.FAILOVER_CAUSE_PRIMARY_DOMAIN_GONE
SECONDARY_DOMAIN_GONE = colo_pb2.FAILOVER_CAUSE_SECONDARY_DOMAIN_GONE
# Promote refused because the target already moved on (a lost answer): ask it.
PROMOTE_REFUSALS = frozenset(
    {
        colo_pb2.ERROR_REASON_GENERATION_NOT_ABOVE,
        colo_pb2.ERROR_REASON_ROLE_CONFLICT,
        colo_pb2.ERROR_REASON_STALE_GENERATION,
    }
)
COPY_CHECK_TIMEOUT = 0.5  # seconds a host has to say whether it holds a pair's guest


class Copy(enum.Enum):
    """Whether a host holds a pair's guest, as its agent says."""

    HELD = "held"  # the agent holds the domain and the domain exists
    GONE = "gone"  # the agent holds no such domain, or its domain vanished
    UNKNOWN = "unknown"  # the host did not answer: no fact either way


def _why(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details() or 'no details'}"


class Roles:
    def __init__(
        self, machine: PairMachine, registry: AgentRegistry, driver: CheckpointDriver, settings: Settings
    ) -> None:
        self.machine = machine
        self.registry = registry
        self.driver = driver
        self.settings = settings
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- background work ------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Runs a role change in the background, keeping a reference and logging failures."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- placement --------------------------------------------------------------------

    def candidates(self) -> list[placement.Candidate]:
        load: dict[str, int] = {}
        for rec in self.machine.pairs.values():
            if rec.state != STOPPED:
                for host in rec.hosts():
                    if host:
                        load[host] = load.get(host, 0) + 1
        return [
            placement.Candidate(
                host_id=a.host_id,
                # A host commands cannot reach, or one that keeps being lost and coming
                # back, takes no role: its pairs would bounce back and forth.
                alive=a.alive and a.reachable and not a.flapping,
                draining=a.info.draining,
                backends=frozenset(a.info.backends),
                labels=dict(a.info.labels),
                roles=load.get(a.host_id, 0),
                max_domains=a.info.capacity.max_domains,
            )
            for a in self.registry.agents.values()
        ]

    def place(
        self, rec: PairRecord, *, preferred: str = "", exclude: tuple[str, ...] = ()
    ) -> placement.Choice | None:
        cands = self.candidates()
        by_id = {c.host_id: c for c in cands}
        primary = by_id.get(rec.pair.primary_host) or placement.Candidate(rec.pair.primary_host)
        backend = rec.pair.spec.WhichOneof("backend") or "sim"
        if (
            preferred
            and preferred in by_id
            and not placement.eligible(
                by_id[preferred], backend=backend, primary=primary.host_id, exclude=exclude
            )
        ):
            return placement.Choice(preferred, "asked for")
        return placement.choose_secondary(
            cands, primary=primary, backend=backend, keys=self.settings.failure_domain_keys, exclude=exclude
        )

    # -- which side holds the copy ------------------------------------------------------

    async def copy_on(self, host: str, domain: str) -> Copy:
        """Asks host's agent whether it holds domain's guest (one GetStatus)."""
        if not host:
            return Copy.GONE
        try:
            status = await self.registry.client(host).status(
                colo_pb2.GetStatusRequest(domain=domain), timeout=COPY_CHECK_TIMEOUT
            )
        except HostNotRegistered:
            return Copy.UNKNOWN
        except grpc.aio.AioRpcError as exc:
            return Copy.GONE if reason_of(exc) == colo_pb2.ERROR_REASON_DOMAIN_NOT_HELD else Copy.UNKNOWN
        held = [d for d in status.domains if d.domain == domain]
        return Copy.HELD if held and not held[0].domain_gone else Copy.GONE

    def _lose(self, rec: PairRecord, why: str) -> None:
        """No host holds the guest: say so, and stop issuing checkpoints for it."""
        self.driver.drop_wanted(rec.domain, f"{rec.domain} is lost")
        self.machine.lost(rec, why)
        self.spawn(self.driver.stop(rec.domain), f"stop-driver-{rec.domain}")

    # -- first boot: protect and re-protect --------------------------------------------

    async def protect(
        self, rec: PairRecord, secondary: str, why: str, started: asyncio.Future[None] | None = None
    ) -> None:
        async with rec.lock:
            await self._first_boot(rec, secondary, why, started, create=True)

    async def _first_boot(
        self,
        rec: PairRecord,
        secondary: str,
        why: str,
        started: asyncio.Future[None] | None = None,
        *,
        create: bool = False,
    ) -> None:
        """SYNCING -> PROTECTED: PrepareSecondary on the new host, then
        StartPrimary, which returns after the first boot's SECONDARY_RESUMED.
        Only a first protection (create) lets the primary's agent create the
        domain; a re-protection copies the guest it already runs, or nothing."""
        primary = rec.pair.primary_host
        try:
            epoch = self.machine.start_syncing(rec, secondary, os.urandom(SECRET_BYTES), why=why)
        except BaseException as exc:
            if started is not None and not started.done():
                started.set_exception(exc)
            raise
        if started is not None and not started.done():
            started.set_result(None)
        generation, spec, s = rec.generation, rec.pair.spec, self.settings
        try:
            prepared = await self.registry.client(secondary).prepare_secondary(
                colo_pb2.PrepareSecondaryRequest(
                    domain=rec.domain,
                    generation=generation,
                    epoch=epoch,
                    spec=spec,
                    pair_secret=rec.secret,
                    peer_host_id=primary,
                    peer_data_address=self._data_address(primary),
                    accept_timeout=duration(s.first_boot_timeout),
                ),
                timeout=deadlines.prepare_timeout(spec, s),  # it makes the domain: follows its size
            )
            booted = await self.registry.client(primary).start_primary(
                colo_pb2.StartPrimaryRequest(
                    domain=rec.domain,
                    generation=generation,
                    epoch=epoch,
                    spec=spec,
                    pair_secret=rec.secret,
                    peer_host_id=secondary,
                    peer_data_address=prepared.data_address,
                    first_boot_timeout=duration(s.first_boot_timeout),
                    create_domain=create,
                ),
                timeout=s.first_boot_timeout + s.rpc_timeout,
            )
        except (grpc.aio.AioRpcError, HostNotRegistered) as exc:
            message = _why(exc) if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            if rec.generation == generation and rec.state == SYNCING:
                self.machine.first_boot_failed(rec, f"first boot {primary} -> {secondary} failed: {message}")
                rec.reprotect_after = time.monotonic() + s.reprotect_backoff
                self.spawn(
                    self._release(secondary, rec.domain, generation, "first boot failed"),
                    f"release-{rec.domain}-{secondary}",
                )
            return
        if rec.generation != generation or rec.state != SYNCING:
            return  # overtaken by a role change
        self.machine.first_boot_done(rec, booted)
        self.driver.start(rec)

    def _data_address(self, host: str) -> str:
        agent = self.registry.get(host)
        return agent.info.data_address if agent is not None else ""

    async def reprotect(self, rec: PairRecord) -> None:
        """UNPROTECTED -> SYNCING on another live host, when there is one."""
        async with rec.lock:
            if rec.state != UNPROTECTED or not self.registry.is_alive(rec.pair.primary_host):
                return
            choice = self.place(rec, preferred=rec.preferred_secondary)
            if choice is None:
                rec.reprotect_after = time.monotonic() + self.settings.reprotect_backoff
                if not rec.unplaced:  # said once, not every retry
                    rec.unplaced = True
                    self.machine.error(
                        rec,
                        "no host can take the secondary (all others dead, draining, full or "
                        "without the backend): it runs unprotected until one registers",
                    )
                return
            if await self.copy_on(rec.pair.primary_host, rec.domain) is Copy.GONE:
                self._lose(
                    rec,
                    f"the primary's domain on {rec.pair.primary_host} is gone and no other host holds "
                    "the guest: nothing to re-protect from",
                )
                return
            rec.preferred_secondary, rec.unplaced = "", False
            await self._first_boot(rec, choice.host_id, choice.why)

    # -- the primary is lost: promote the secondary ------------------------------------

    async def primary_lost(self, rec: PairRecord, generation: int, why: str) -> None:
        async with rec.lock:
            if rec.generation != generation:
                return
            if rec.state == SYNCING:
                # The new secondary has no whole copy yet: nothing can be promoted.
                self.machine.first_boot_failed(
                    rec,
                    f"primary {rec.pair.primary_host} lost during the first boot "
                    f"({why}): the guest went with it",
                )
                return
            if rec.state not in (PROTECTED, CHECKPOINTING):
                if rec.state == UNPROTECTED:
                    self.machine.error(
                        rec,
                        f"primary {rec.pair.primary_host} lost while unprotected ({why}): "
                        "the domain is down; protect it again when a host is back",
                    )
                return
            if not await self._promote_or_lose(
                rec, PRIMARY_LOST, f"primary {rec.pair.primary_host} lost: {why}"
            ):
                return
        self.spawn(self.reprotect(rec), f"reprotect-{rec.domain}")

    async def _promote_or_lose(self, rec: PairRecord, cause: colo_pb2.FailoverCause, why: str) -> bool:
        """The primary is gone: promote the secondary, which holds the last whole
        checkpoint, unless its domain is gone too (then the pair is lost)."""
        if await self.copy_on(rec.pair.secondary_host, rec.domain) is Copy.GONE:
            self._lose(rec, f"{why}; and the secondary's domain on {rec.pair.secondary_host} is gone too")
            return False
        return await self._promote(rec, cause, why, release_old_inline=False)

    async def domain_gone(self, rec: PairRecord, host: str, generation: int) -> None:
        """host reports that its domain of the pair vanished while the host lives."""
        async with rec.lock:
            primary, secondary = rec.hosts()
            if rec.generation != generation or host not in (primary, secondary) or not host:
                return
            if host == secondary:
                if rec.state in (PROTECTED, CHECKPOINTING, SYNCING):
                    why = f"the secondary's domain on {host} is gone (destroyed or crashed)"
                    if not await self._drop_secondary(rec, SECONDARY_DOMAIN_GONE, why):
                        return
                else:
                    return
            elif rec.state in (PROTECTED, CHECKPOINTING):
                why = f"the primary's domain on {host} is gone (destroyed or crashed)"
                await self._promote_or_lose(rec, PRIMARY_DOMAIN_GONE, why)
                if rec.state != UNPROTECTED:
                    return
            elif rec.state in (SYNCING, UNPROTECTED):
                self._lose(
                    rec,
                    f"the primary's domain on {host} is gone while it was the only copy "
                    f"({colo_pb2.PairState.Name(rec.state)}): the guest and its data are lost",
                )
                return
            else:
                return
        self.spawn(self.reprotect(rec), f"reprotect-{rec.domain}")

    async def _promote(
        self, rec: PairRecord, cause: colo_pb2.FailoverCause, why: str, *, release_old_inline: bool
    ) -> bool:
        """FAILING_OVER -> UNPROTECTED: fence (generation + 1), then Promote."""
        old_primary, target = rec.hosts()
        self.driver.drop_wanted(rec.domain, f"{rec.domain} is failing over")
        generation = self.machine.begin_failover(rec, cause, message=why)
        req = colo_pb2.PromoteRequest(
            domain=rec.domain, generation=generation, epoch=rec.pair.epoch, cause=cause
        )
        promoted = await self._send_promote(rec, target, req, why)
        if promoted is None:
            return False
        self.machine.promoted(rec, cause, promoted)
        release = self._release(old_primary, rec.domain, generation, f"failover ({cause_name(cause)})")
        if release_old_inline:
            await release
        else:
            self.spawn(release, f"release-{rec.domain}-{old_primary}")
        return True

    async def _send_promote(
        self, rec: PairRecord, target: str, req: colo_pb2.PromoteRequest, why: str
    ) -> colo_pb2.PromoteResponse | None:
        """Promote, retried while the target lives; idempotent if it already is primary at this generation."""
        give_up = time.monotonic() + self.settings.rpc_timeout
        client = self.registry.client(target)
        while True:
            try:
                return await client.promote(req, timeout=self.settings.rpc_timeout)
            except grpc.aio.AioRpcError as exc:
                refused = reason_of(exc) in PROMOTE_REFUSALS
                if refused:
                    done = await self._already_promoted(target, req)
                    if done is not None:
                        return done
                if refused or not self.registry.is_alive(target) or time.monotonic() > give_up:
                    self.machine.promotion_failed(
                        rec,
                        req.cause,
                        f"cannot promote {target} ({_why(exc)}) after {why}: the domain is down",
                    )
                    return None
                await asyncio.sleep(0.05)

    async def _already_promoted(
        self, target: str, req: colo_pb2.PromoteRequest
    ) -> colo_pb2.PromoteResponse | None:
        """The answer to an earlier Promote was lost (a coordinator restart): the agent says so."""
        try:
            status = await self.registry.client(target).status(
                colo_pb2.GetStatusRequest(domain=req.domain), timeout=self.settings.rpc_timeout
            )
        except grpc.aio.AioRpcError:
            return None
        for d in status.domains:
            if d.role == colo_pb2.ROLE_PRIMARY and d.generation == req.generation:
                return colo_pb2.PromoteResponse(
                    domain=d.domain, generation=d.generation, epoch=d.epoch, service_address=d.service_address
                )
        return None

    async def resume_failover(self, rec: PairRecord) -> None:
        """A restarted coordinator found the pair FAILING_OVER: finish the
        promotion at the stored (already fencing) generation."""
        async with rec.lock:
            if rec.state != FAILING_OVER:
                return
            old_primary, target = rec.hosts()
            req = colo_pb2.PromoteRequest(domain=rec.domain, generation=rec.generation, epoch=rec.pair.epoch)
            why = "failover resumed after a coordinator restart"
            promoted = await self._send_promote(rec, target, req, why)
            if promoted is None:
                return
            self.machine.promoted(rec, req.cause, promoted)
            self.spawn(self._release(old_primary, rec.domain, rec.generation, why), f"release-{rec.domain}")
        self.spawn(self.reprotect(rec), f"reprotect-{rec.domain}")

    # -- the secondary is lost or unhealthy: the primary runs unprotected -----------------

    async def drop_secondary(
        self, rec: PairRecord, generation: int, cause: colo_pb2.FailoverCause, why: str
    ) -> None:
        async with rec.lock:
            if rec.generation != generation or rec.state not in (PROTECTED, CHECKPOINTING, SYNCING):
                return
            if not await self._drop_secondary(rec, cause, why):
                return
        self.spawn(self.reprotect(rec), f"reprotect-{rec.domain}")

    async def _drop_secondary(self, rec: PairRecord, cause: colo_pb2.FailoverCause, why: str) -> bool:
        """Drops the secondary, once the primary says it holds the guest: the
        secondary may be the last copy.  False: nothing was dropped (the pair
        failed over or was lost instead, or the primary could not say)."""
        primary, secondary = rec.hosts()
        held = await self.copy_on(primary, rec.domain)
        if held is Copy.UNKNOWN:
            self.machine.error(
                rec,
                f"kept secondary {secondary} ({why}): primary {primary} did not say whether it holds "
                "the guest, and the secondary may be the last copy",
            )
            return False
        if held is Copy.GONE:
            gone = f"the primary's domain on {primary} is gone (found while dropping the secondary: {why})"
            if rec.state == SYNCING:
                self._lose(rec, gone)
            else:
                await self._promote_or_lose(rec, PRIMARY_DOMAIN_GONE, gone)
            return rec.state == UNPROTECTED  # promoted: re-protect the new primary
        self.driver.drop_wanted(rec.domain, f"{rec.domain} lost its secondary")
        generation = self.machine.secondary_dropped(rec, cause, message=why)
        try:
            await self.registry.client(primary).set_unprotected(
                colo_pb2.SetUnprotectedRequest(
                    domain=rec.domain, generation=generation, epoch=rec.pair.epoch, cause=cause
                ),
                timeout=self.settings.rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if reason_of(exc) != colo_pb2.ERROR_REASON_DOMAIN_NOT_HELD:
                self.machine.error(rec, f"cannot tell primary {primary} it runs unprotected: {_why(exc)}")
        else:
            self.machine.unprotected_confirmed(rec, cause)
        if secondary:
            self.spawn(
                self._release(secondary, rec.domain, generation, f"dropped ({cause_name(cause)})"),
                f"release-{rec.domain}-{secondary}",
            )
        return True

    async def secondary_trouble(self, rec: PairRecord, generation: int, why: str) -> None:
        """A checkpoint says the secondary cannot be trusted.  Heartbeats get
        a moment to say whether its host is gone (then it is lost, not
        unhealthy, or it is the primary that failed)."""
        await asyncio.sleep(self.settings.heartbeat_timeout)
        if rec.generation != generation or not self.registry.is_alive(rec.pair.primary_host):
            return
        cause = SECONDARY_UNHEALTHY if self.registry.is_alive(rec.pair.secondary_host) else SECONDARY_LOST
        await self.drop_secondary(rec, generation, cause, why)

    def host_lost(self, host: str, why: str) -> None:
        """Every role on host fails over."""
        for rec in list(self.machine.pairs.values()):
            if rec.state in (STOPPED,):
                continue
            if rec.pair.primary_host == host:
                self.spawn(self.primary_lost(rec, rec.generation, why), f"failover-{rec.domain}")
            elif rec.pair.secondary_host == host:
                self.spawn(
                    self.drop_secondary(rec, rec.generation, SECONDARY_LOST, f"{host} lost: {why}"),
                    f"unprotect-{rec.domain}",
                )

    # -- planned switchover ------------------------------------------------------------

    async def switchover(
        self,
        rec: PairRecord,
        cause: colo_pb2.FailoverCause,
        *,
        new_secondary: str = "",
        expected_generation: int = 0,
    ) -> colo_pb2.Pair:
        """A final checkpoint after which the primary stays paused, then the
        secondary is promoted; re-protection follows in the background."""
        async with rec.lock:
            if expected_generation and rec.generation != expected_generation:
                fail(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{rec.domain} is at generation {rec.generation}, "
                    f"not the expected {expected_generation}: "
                    "read the pair again (colo pair) and decide on its current state",
                    reason=colo_pb2.ERROR_REASON_GENERATION_MISMATCH,
                )
            if rec.state not in (PROTECTED, CHECKPOINTING) or rec.domain not in self.driver.drivers:
                fail(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{rec.domain} is {colo_pb2.PairState.Name(rec.state)}, not PROTECTED: "
                    "a switchover needs a "
                    "secondary with a whole copy; wait for PROTECTED (colo pair) and retry",
                    reason=colo_pb2.ERROR_REASON_WRONG_STATE,
                )
            old_primary = rec.pair.primary_host
            await self.driver.hold(rec.domain)
            try:
                if rec.state != PROTECTED:
                    fail(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"{rec.domain} left PROTECTED while the switchover waited: "
                        "retry when it is PROTECTED",
                        reason=colo_pb2.ERROR_REASON_WRONG_STATE,
                    )
                try:
                    await self.driver.issue_now(rec.domain, colo_pb2.CHECKPOINT_TRIGGER_MANUAL, final=True)
                except CheckpointError as exc:
                    fail(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"switchover of {rec.domain} abandoned, roles unchanged: the final checkpoint failed "
                        f"({exc.message})",
                        reason=colo_pb2.ERROR_REASON_CHECKPOINT_FAILED,
                    )
                ok = await self._promote(
                    rec, cause, f"switchover from {old_primary}", release_old_inline=True
                )
            finally:
                self.driver.release(rec.domain)
            if not ok:
                fail(
                    grpc.StatusCode.UNAVAILABLE,
                    f"switchover of {rec.domain} failed: {rec.pair.last_error}",
                    reason=colo_pb2.ERROR_REASON_FIRST_BOOT_FAILED,
                )
            old = self.registry.get(old_primary)
            if new_secondary:
                rec.preferred_secondary = new_secondary
            elif old is not None and not old.info.draining:
                rec.preferred_secondary = old_primary
            out = colo_pb2.Pair()
            out.CopyFrom(rec.pair)
        self.spawn(self.reprotect(rec), f"reprotect-{rec.domain}")
        return out

    # -- unprotect -------------------------------------------------------------------------

    async def unprotect(self, rec: PairRecord, *, stop_domain: bool) -> None:
        async with rec.lock:
            if rec.state == STOPPED:
                return
            await self.driver.stop(rec.domain)
            primary, secondary = rec.hosts()
            generation = rec.generation
            if primary:
                await self._release(
                    primary, rec.domain, generation, "unprotected by request", keep_running=not stop_domain
                )
            if secondary:
                await self._release(secondary, rec.domain, generation, "unprotected by request")
            self.machine.stop(
                rec,
                "stopped by request"
                + (" (domain stopped)" if stop_domain else f" (guest left running on {primary})"),
            )

    async def release_superseded(self, host: str, domain: str, generation: int) -> None:
        await self._release(host, domain, generation, f"superseded by generation {generation}")

    async def _release(
        self, host: str, domain: str, generation: int, reason: str, *, keep_running: bool = False
    ) -> None:
        """Best effort: a dead host holds nothing; a live one is fenced anyway."""
        if not self.registry.is_alive(host):
            return
        try:
            await self.registry.client(host).release(
                colo_pb2.ReleaseRequest(
                    domain=domain, generation=generation, keep_running=keep_running, reason=reason
                ),
                timeout=self.settings.rpc_timeout,
            )
        except (grpc.aio.AioRpcError, HostNotRegistered) as exc:
            log.warning("%s: release on %s failed: %s", domain, host, exc)
