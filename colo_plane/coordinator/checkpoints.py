"""Checkpoint issuing: one driver task per pair issues every checkpoint of
that pair, so there is never more than one at once.

While the pair is PROTECTED and nothing else is wanted, the driver keeps
the next epoch *armed* on the primary; arming, firing, the fallback request
and the divergences they report are arming.py's (docs/protocol.md).
Without arming (--no-arm-checkpoints) a request, an on-demand call or the
timer each make a checkpoint wanted; whatever arrives while one is in
flight joins the next.  Here: the driver's loop, the Agent.Checkpoint call
and what its outcome means for the pair."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from prometheus_client import Histogram

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRegistry, HostNotRegistered
from colo_plane.coordinator.arming import ARM_RETRY, Armed, Arming
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import PROTECTED, STOPPED, PairMachine, PairRecord, trigger_name
from colo_plane.coordinator.wanted import CheckpointError, Result, Wanted, requests
from colo_plane.rpc import duration, reason_of, seconds

__all__ = ["CheckpointDriver", "CheckpointError"]

log = logging.getLogger(__name__)

# Errors after which the agent has closed the data connection: no further
# checkpoint can work until the pair is re-protected (but a BUSY refusal).
LINK_LOST = (grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION)
GUEST_MISSING = frozenset({colo_pb2.ERROR_REASON_DOMAIN_NOT_HELD, colo_pb2.ERROR_REASON_DOMAIN_GONE})


@functools.cache
def _to_issue(trigger: int) -> Histogram:
    return metrics.REQUEST_TO_ISSUE.labels(trigger_name(trigger))


@dataclass
class PairDriver:
    rec: PairRecord
    task: asyncio.Task[None] | None = None
    wanted: Wanted | None = None
    inflight_epoch: int = 0
    holds: int = 0  # role changes in progress that forbid new checkpoints
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    next_timer: float = 0.0  # loop.time() when the interval passes
    call: asyncio.Future[colo_pb2.AgentCheckpointResponse] | None = None  # Agent.Checkpoint in flight
    armed: Armed | None = None  # the armed checkpoint in flight (arming.py)


# Called when a checkpoint shows the secondary cannot be trusted any more.
SecondaryTrouble = Callable[[PairRecord, int, str], None]


class CheckpointDriver:
    def __init__(
        self, machine: PairMachine, registry: AgentRegistry, settings: Settings, on_trouble: SecondaryTrouble
    ) -> None:
        self.machine = machine
        self.registry = registry
        self.settings = settings
        self.on_trouble = on_trouble
        self.arming = Arming(machine, registry, self.timeout)
        self._on_unreachable: Callable[[str], None] | None = None
        self.arming.want = self.want  # a RequestCheckpoint makes a checkpoint wanted like any other
        self.drivers: dict[str, PairDriver] = {}
        # Optional raw samples of request -> issued (bench); the histogram always gets them.
        self.samples: list[float] | None = None

    @property
    def on_unreachable(self) -> Callable[[str], None] | None:
        """Called with a host a call failed to reach as if it were down (the failure detector's)."""
        return self._on_unreachable

    @on_unreachable.setter
    def on_unreachable(self, suspect: Callable[[str], None] | None) -> None:
        self._on_unreachable = self.arming.on_unreachable = suspect

    # -- life of a driver ------------------------------------------------------------

    def start(self, rec: PairRecord) -> None:
        d = self.drivers.get(rec.domain)
        if d is not None and d.task is not None and not d.task.done():
            d.rec = rec
            d.wake.set()
            return
        d = PairDriver(rec)
        d.idle.set()
        d.next_timer = asyncio.get_running_loop().time() + self.interval(rec)
        d.task = asyncio.create_task(self._run(d), name=f"checkpoints-{rec.domain}")
        self.drivers[rec.domain] = d

    async def stop(self, domain: str) -> None:
        d = self.drivers.pop(domain, None)
        if d is not None and d.task is not None:
            for call in self._calls(d):
                call.cancel()
            d.task.cancel()
            await asyncio.gather(d.task, return_exceptions=True)
            self._fail_waiters(d, grpc.StatusCode.FAILED_PRECONDITION, f"{domain} is no longer protected")

    async def close(self) -> None:
        for domain in list(self.drivers):
            await self.stop(domain)

    @staticmethod
    def _calls(d: PairDriver) -> list[Result]:
        """The Agent.Checkpoint calls in flight: the checkpoint's, and a firing one."""
        return ([d.call] if d.call is not None else []) + Arming.calls(d.armed)

    def poke(self, domain: str) -> None:
        """The pair's state changed: let its driver look again."""
        d = self.drivers.get(domain)
        if d is not None:
            d.wake.set()

    def interval(self, rec: PairRecord) -> float:
        return seconds(rec.pair.spec.checkpoint_interval, self.settings.checkpoint_interval)

    def timeout(self, rec: PairRecord) -> float:
        return seconds(rec.pair.spec.checkpoint_timeout, self.settings.checkpoint_timeout)

    # -- wanting a checkpoint ------------------------------------------------------------

    def want(
        self, domain: str, trigger: colo_pb2.CheckpointTrigger, *, wait: bool = False, final: bool = False
    ) -> tuple[int, bool, Result | None]:
        """Makes a checkpoint wanted; returns (the epoch that will serve it,
        coalesced, a future of its answer if wait)."""
        d = self.drivers[domain]
        if d.armed is not None and not final:
            return self.arming.join(d.rec, d.armed, trigger, wait)
        self.arming.fire(d.rec, d.armed, trigger)  # a final checkpoint comes next, right after it
        coalesced = d.wanted is not None
        if d.wanted is None:
            d.wanted = Wanted(trigger, time.perf_counter())
            d.wake.set()
        d.wanted.final = d.wanted.final or final
        future = d.wanted.waiter() if wait else None
        requests(trigger, coalesced).inc()
        return d.rec.epoch_allocated + 1, coalesced, future

    async def hold(self, domain: str) -> None:
        """No new checkpoint for the pair until release(); returns once none is in
        flight (an armed one is fired, so the caller knows how it ended)."""
        d = self.drivers[domain]
        d.holds += 1
        self.arming.fire(d.rec, d.armed, colo_pb2.CHECKPOINT_TRIGGER_MANUAL)
        await d.idle.wait()

    def release(self, domain: str) -> None:
        d = self.drivers.get(domain)
        if d is not None and d.holds:
            d.holds -= 1
            d.wake.set()

    # -- the driver ------------------------------------------------------------------

    def _ready(self, d: PairDriver) -> bool:
        rec = d.rec
        return rec.state == PROTECTED and not d.holds and not rec.link_broken

    async def _run(self, d: PairDriver) -> None:
        loop = asyncio.get_running_loop()
        while d.rec.state != STOPPED:
            if not self._ready(d):
                d.wake.clear()
                await d.wake.wait()
                # The interval restarts when the pair is protected again.
                d.next_timer = loop.time() + self.interval(d.rec)
                continue
            if d.wanted is None:
                delay = d.next_timer - loop.time()
                if delay <= 0:
                    d.wanted = Wanted(colo_pb2.CHECKPOINT_TRIGGER_TIMER, time.perf_counter())
                elif self.settings.arm_checkpoints:
                    d.wanted = Wanted(colo_pb2.CHECKPOINT_TRIGGER_TIMER, time.perf_counter(), arm=delay)
                else:
                    d.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await d.wake.wait()
                    continue
            wanted, d.wanted = d.wanted, None
            ok = False
            try:
                ok = await self._issue(d, wanted)
            except Exception as exc:  # a bug must not stop the pair's checkpoints for good
                log.exception("%s: issuing a checkpoint failed", d.rec.domain)
                wanted.resolve(error=CheckpointError(grpc.StatusCode.INTERNAL, str(exc)))
            d.next_timer = loop.time() + self.interval(d.rec)
            if not ok and d.wanted is None:
                # Re-arming at once would turn a failing primary into a busy loop.
                d.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(ARM_RETRY, self.interval(d.rec))):
                        await d.wake.wait()

    async def issue_now(
        self, domain: str, trigger: colo_pb2.CheckpointTrigger, *, final: bool = False
    ) -> colo_pb2.AgentCheckpointResponse:
        """One checkpoint issued by the caller, who holds the driver (switchover)."""
        d = self.drivers[domain]
        wanted = Wanted(trigger, time.perf_counter(), final=final)
        future = wanted.waiter()
        await self._issue(d, wanted)
        return await future

    async def _issue(self, d: PairDriver, wanted: Wanted) -> bool:
        """One checkpoint, armed or now; True when it completed."""
        rec = d.rec
        generation, primary = rec.generation, rec.pair.primary_host
        epoch = self.machine.allocate_epoch(rec)
        issued = time.perf_counter()
        timeout = self.timeout(rec)
        req = colo_pb2.AgentCheckpointRequest(
            domain=rec.domain,
            generation=generation,
            epoch=epoch,
            trigger=wanted.trigger,
            timeout=duration(timeout),
            final=wanted.final,
        )
        armed = d.armed = self.arming.arm(rec, epoch, wanted, req) if wanted.arm else None
        if armed is None:
            self._issued(rec, epoch, wanted, issued)
        d.inflight_epoch = epoch
        d.idle.clear()
        try:
            try:
                client = self.registry.client(primary)
            except HostNotRegistered:
                self._failed(
                    d,
                    wanted,
                    generation,
                    epoch,
                    code=grpc.StatusCode.UNAVAILABLE,
                    details=f"primary {primary} is not registered",
                )
                return False
            # The agent aborts at `timeout` (after the arm); the call's deadline leaves it time to
            # say so.  A role change cancels the call (abandon()): a hung primary must not hold the
            # driver.
            d.call = asyncio.ensure_future(client.checkpoint(req, timeout=wanted.arm + timeout + 1.0))
            try:
                if armed is not None:
                    self.arming.sent(armed)
                await asyncio.wait({d.call})
                call = d.call if armed is None else await self.arming.answered(d.call, armed)
            finally:
                d.call = None
                d.armed = None
            if not call.cancelled() and isinstance(call.exception(), grpc.aio.AioRpcError):
                exc = call.exception()
                assert isinstance(exc, grpc.aio.AioRpcError)
                self._failed(
                    d,
                    wanted,
                    generation,
                    epoch,
                    code=exc.code(),
                    details=exc.details() or exc.code().name,
                    reason=reason_of(exc),
                )
                return False
            if call.cancelled() or rec.generation != generation or rec.pair.pending_epoch != epoch:
                # A role change overtook it; the answer belongs to a superseded generation.
                wanted.resolve(
                    error=CheckpointError(
                        grpc.StatusCode.ABORTED, f"{rec.domain} changed roles during checkpoint {epoch}"
                    ),
                )
                return False
            resp = call.result()
            if armed is not None:
                if self.arming.started(rec, epoch, armed, resp):
                    self._issued(rec, epoch, wanted, wanted.since)  # fired: it started when asked
                # It started on the primary: its own CHECKPOINT_REQUEST -> SECONDARY_RESUMED.
                metrics.ISSUE_TO_RESUMED.observe(resp.stats.duration_ns / 1e9)
            else:
                metrics.ISSUE_TO_RESUMED.observe(time.perf_counter() - issued)
            self.machine.checkpoint_done(rec, wanted.trigger, resp)
            wanted.resolve(resp=resp)
            if resp.verify.outcome == colo_pb2.VERIFY_OUTCOME_MISMATCH:
                message = (
                    f"verify found the secondary's copy wrong after epoch {epoch}: "
                    f"{resp.verify.mismatched_pages} page(s) differ"
                )
                self.machine.emit(
                    rec, colo_pb2.EVENT_KIND_VERIFY_FAILED, epoch=epoch, verify=resp.verify, message=message
                )
                self.on_trouble(rec, generation, message)
            return True
        finally:
            d.inflight_epoch = 0
            d.idle.set()

    def _issued(self, rec: PairRecord, epoch: int, wanted: Wanted, issued: float) -> None:
        waited = issued - wanted.since
        _to_issue(wanted.trigger).observe(waited)
        if self.samples is not None and wanted.trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST:
            self.samples.append(waited)
        self.machine.checkpoint_issued(rec, epoch, wanted.trigger)

    def _failed(
        self,
        d: PairDriver,
        wanted: Wanted,
        generation: int,
        epoch: int,
        *,
        code: grpc.StatusCode,
        details: str,
        reason: colo_pb2.ErrorReason = colo_pb2.ERROR_REASON_UNSPECIFIED,
    ) -> None:
        rec = d.rec
        message = f"{code.name} from primary {rec.pair.primary_host}: {details}"
        wanted.resolve(error=CheckpointError(code, f"checkpoint {epoch} of {rec.domain} failed: {message}"))
        if rec.generation != generation or rec.pair.pending_epoch != epoch:
            return  # a role change overtook it
        if rec.state == PROTECTED:  # armed: it fails as the checkpoint it was to be
            self.machine.checkpoint_issued(rec, epoch, wanted.trigger)
        self.machine.checkpoint_failed(rec, epoch, wanted.trigger, message)
        if code == grpc.StatusCode.UNAVAILABLE and self.on_unreachable is not None:
            self.on_unreachable(rec.pair.primary_host)  # the primary may be down: confirm now
        if reason in GUEST_MISSING:
            # The primary holds no such domain, or it is gone: which side still holds the
            # guest is checked before anything is given up (roles.copy_on), so at once.
            self.on_trouble(rec, generation, message)
        elif code in LINK_LOST and reason != colo_pb2.ERROR_REASON_BUSY:
            rec.link_broken = message
            if self.on_unreachable is not None and rec.pair.secondary_host:
                self.on_unreachable(rec.pair.secondary_host)  # the secondary may be down: confirm now
            self.on_trouble(rec, generation, message)
        elif rec.failures >= self.settings.unhealthy_after:
            self.on_trouble(rec, generation, f"{rec.failures} checkpoints in a row failed; last: {message}")

    def _fail_waiters(self, d: PairDriver, code: grpc.StatusCode, message: str) -> None:
        if d.wanted is not None:
            d.wanted.resolve(error=CheckpointError(code, message))
            d.wanted = None

    def drop_wanted(self, domain: str, message: str) -> None:
        """Role change: what was wanted of the old generation is answered with an
        error, and a checkpoint call still in flight is abandoned."""
        d = self.drivers.get(domain)
        if d is not None:
            self._fail_waiters(d, grpc.StatusCode.ABORTED, message)
            for call in self._calls(d):
                call.cancel()
