"""Checkpoint issuing: one driver task per pair issues every checkpoint of
that pair, so there is never more than one at once.

While the pair is PROTECTED and nothing else is wanted, the driver keeps
the next epoch *armed* on the primary (docs/protocol.md): an
Agent.Checkpoint call that starts, in C, the moment the primary's proxy
holds a reply, or when the pair's interval passes.  A held reply thus
never waits for a round trip through the coordinator.  An on-demand call
(or a RequestCheckpoint, the primary's fallback) fires the armed epoch with
a second call for it.  Without arming (--no-arm-checkpoints) a request, an
on-demand call or the timer each make a checkpoint wanted; whatever arrives
while one is in flight joins the next."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from prometheus_client import Counter, Histogram

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRegistry, HostNotRegistered
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import PROTECTED, STOPPED, PairMachine, PairRecord, trigger_name
from colo_plane.rpc import duration, reason_of, seconds

log = logging.getLogger(__name__)

Result = asyncio.Future[colo_pb2.AgentCheckpointResponse]

# Errors after which the agent has closed the data connection: no further
# checkpoint can work until the pair is re-protected (but a BUSY refusal).
LINK_LOST = (grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION)
GUEST_MISSING = frozenset({colo_pb2.ERROR_REASON_DOMAIN_NOT_HELD, colo_pb2.ERROR_REASON_DOMAIN_GONE})


ARM_RETRY = 0.2  # seconds after a failed checkpoint before the next epoch is armed
# A primary that asks for a checkpoint this long after its epoch was armed
# never got the arm: commands do not reach it (docs/coordinator.md, "One-way
# partitions").  It asks only after a whole tick without an armed epoch.
ARM_LOST_AFTER = 0.1


class CheckpointError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.cache
def _requests(trigger: int, coalesced: bool) -> Counter:
    return metrics.CHECKPOINT_REQUESTS.labels(trigger_name(trigger), "true" if coalesced else "false")


@functools.cache
def _to_issue(trigger: int) -> Histogram:
    return metrics.REQUEST_TO_ISSUE.labels(trigger_name(trigger))


@dataclass
class Wanted:
    """The next checkpoint of a pair: why, since when, and who waits for it."""

    trigger: colo_pb2.CheckpointTrigger
    since: float  # time.perf_counter() of the first request it serves
    waiters: list[Result] = field(default_factory=list)
    final: bool = False
    arm: float = 0.0  # armed: the primary starts it at a held reply or after this many seconds
    fired: bool = False  # armed, and the coordinator asked for it now (trigger says why)
    req: colo_pb2.AgentCheckpointRequest | None = None  # armed: the call that armed it
    fire: asyncio.Future[colo_pb2.AgentCheckpointResponse] | None = None  # the second call
    sent: float = 0.0  # armed: loop.time() the arming call was sent


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
    armed: Wanted | None = None  # the armed checkpoint in flight


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
        self.on_unreachable: Callable[[str], None] | None = None
        self.drivers: dict[str, PairDriver] = {}
        # Optional raw samples of request -> issued (bench); the histogram always gets them.
        self.samples: list[float] | None = None

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
    def _calls(d: PairDriver) -> list[asyncio.Future[colo_pb2.AgentCheckpointResponse]]:
        """The Agent.Checkpoint calls in flight: the checkpoint's, and a firing one."""
        calls = [d.call, d.armed.fire if d.armed is not None else None]
        return [c for c in calls if c is not None]

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
            return self._join_armed(d, trigger, wait)
        if d.armed is not None:
            self._fire(d, trigger)  # the final checkpoint comes next, right after it
        coalesced = d.wanted is not None
        if d.wanted is None:
            d.wanted = Wanted(trigger, time.perf_counter())
            d.wake.set()
        d.wanted.final = d.wanted.final or final
        future: Result | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            d.wanted.waiters.append(future)
        _requests(trigger, coalesced).inc()
        return d.rec.epoch_allocated + 1, coalesced, future

    def _join_armed(
        self, d: PairDriver, trigger: colo_pb2.CheckpointTrigger, wait: bool
    ) -> tuple[int, bool, Result | None]:
        """The armed checkpoint serves the request: fired now, unless it was already."""
        armed = d.armed
        assert armed is not None
        coalesced = armed.fired
        if (
            trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST
            and not armed.fired
            and asyncio.get_running_loop().time() - armed.sent > ARM_LOST_AFTER
            and self.on_unreachable is not None
        ):
            self.on_unreachable(d.rec.pair.primary_host)  # its arm never arrived: confirm it hears us
        self._fire(d, trigger)
        future: Result | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            armed.waiters.append(future)
        _requests(trigger, coalesced).inc()
        return d.rec.pair.pending_epoch, coalesced, future

    def _fire(self, d: PairDriver, trigger: colo_pb2.CheckpointTrigger) -> None:
        """A second Agent.Checkpoint for the armed epoch: it starts now (its answer
        is the armed call's; this call's own is only logged)."""
        armed = d.armed
        req = armed.req if armed is not None else None
        if armed is None or req is None or armed.fired:
            return
        armed.fired, armed.trigger, armed.since = True, trigger, time.perf_counter()
        try:
            client = self.registry.client(d.rec.pair.primary_host)
        except HostNotRegistered:
            return  # the armed call fails on its own
        fire = colo_pb2.AgentCheckpointRequest()
        fire.CopyFrom(req)
        fire.ClearField("arm")
        fire.trigger = trigger
        armed.fire = asyncio.ensure_future(client.checkpoint(fire, timeout=self.timeout(d.rec) + 1.0))
        armed.fire.add_done_callback(functools.partial(self._fired, d.rec.domain, req.epoch))

    @staticmethod
    def _fired(domain: str, epoch: int, call: asyncio.Future[colo_pb2.AgentCheckpointResponse]) -> None:
        if not call.cancelled() and call.exception() is not None:
            log.debug("%s: firing armed epoch %d: %s", domain, epoch, call.exception())

    async def hold(self, domain: str) -> None:
        """No new checkpoint for the pair until release(); returns once none is in
        flight (an armed one is fired, so the caller knows how it ended)."""
        d = self.drivers[domain]
        d.holds += 1
        self._fire(d, colo_pb2.CHECKPOINT_TRIGGER_MANUAL)
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
                self._resolve(wanted, error=CheckpointError(grpc.StatusCode.INTERNAL, str(exc)))
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
        future: Result = asyncio.get_running_loop().create_future()
        wanted.waiters.append(future)
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
        if wanted.arm:
            req.arm.CopyFrom(duration(wanted.arm))
            self.machine.checkpoint_armed(rec, epoch)
            d.armed, wanted.req = wanted, req
        else:
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
            wanted.sent = asyncio.get_running_loop().time()
            try:
                await asyncio.wait({d.call})
                call = await self._answered(d.call, wanted)
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
                self._resolve(
                    wanted,
                    error=CheckpointError(
                        grpc.StatusCode.ABORTED, f"{rec.domain} changed roles during checkpoint {epoch}"
                    ),
                )
                return False
            resp = call.result()
            if wanted.arm:
                self._armed_started(rec, epoch, wanted, resp)
                # It started on the primary: its own CHECKPOINT_REQUEST -> SECONDARY_RESUMED.
                metrics.ISSUE_TO_RESUMED.observe(resp.stats.duration_ns / 1e9)
            else:
                metrics.ISSUE_TO_RESUMED.observe(time.perf_counter() - issued)
            self.machine.checkpoint_done(rec, wanted.trigger, resp)
            self._resolve(wanted, resp=resp)
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

    @staticmethod
    async def _answered(call: Result, wanted: Wanted) -> Result:
        """The call that answers for the checkpoint.  A fired armed epoch: if the
        second call overtook the armed one on the wire, the agent ran the
        epoch for it and refused the armed call as not above its last epoch;
        the second call's answer is the checkpoint's then."""
        fire = wanted.fire
        if fire is None or call.cancelled() or call.exception() is None:
            return call
        await asyncio.wait({fire})
        return fire if not fire.cancelled() and fire.exception() is None else call

    def _issued(self, rec: PairRecord, epoch: int, wanted: Wanted, issued: float) -> None:
        waited = issued - wanted.since
        _to_issue(wanted.trigger).observe(waited)
        if self.samples is not None and wanted.trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST:
            self.samples.append(waited)
        self.machine.checkpoint_issued(rec, epoch, wanted.trigger)

    def _armed_started(
        self, rec: PairRecord, epoch: int, wanted: Wanted, resp: colo_pb2.AgentCheckpointResponse
    ) -> None:
        """An armed checkpoint came back: on the record as issued when it started."""
        if wanted.fired:
            self._issued(rec, epoch, wanted, wanted.since)  # fired: it started when asked
            return
        wanted.trigger = resp.trigger or colo_pb2.CHECKPOINT_TRIGGER_TIMER
        if wanted.trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST:
            # The primary's proxy held a reply: the armed epoch started at once.
            self.machine.divergence(
                rec, epoch=epoch, host=rec.pair.primary_host, reason=resp.reason, request_seq=resp.request_seq
            )
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
        self._resolve(
            wanted, error=CheckpointError(code, f"checkpoint {epoch} of {rec.domain} failed: {message}")
        )
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

    @staticmethod
    def _resolve(
        wanted: Wanted,
        *,
        resp: colo_pb2.AgentCheckpointResponse | None = None,
        error: BaseException | None = None,
    ) -> None:
        for future in wanted.waiters:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                assert resp is not None
                future.set_result(resp)

    def _fail_waiters(self, d: PairDriver, code: grpc.StatusCode, message: str) -> None:
        if d.wanted is not None:
            self._resolve(d.wanted, error=CheckpointError(code, message))
            d.wanted = None

    def drop_wanted(self, domain: str, message: str) -> None:
        """Role change: what was wanted of the old generation is answered with an
        error, and a checkpoint call still in flight is abandoned."""
        d = self.drivers.get(domain)
        if d is not None:
            self._fail_waiters(d, grpc.StatusCode.ABORTED, message)
            for call in self._calls(d):
                call.cancel()
