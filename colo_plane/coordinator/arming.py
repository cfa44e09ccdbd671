"""The coordinator's epoch scheduler for armed checkpoints (docs/protocol.md):
arming, firing, the fallback request, and the one place a divergence is
counted and recorded (CHECKPOINT_REQUESTED).

While a pair is PROTECTED and nothing else is wanted, its checkpoint driver
(checkpoints.py) issues the next epoch *armed*: an Agent.Checkpoint with
`arm` that the primary starts itself, in C, at its first held reply or when
the interval passes.  A checkpoint wanted meanwhile (on demand, a
switchover's final one, or a RequestCheckpoint: the primary's fallback when
nothing was armed there for a tick) fires the armed epoch with a second
call for it.  The answer of the armed call says what started it."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRegistry, HostNotRegistered
from colo_plane.coordinator.statemachine import PairMachine, PairRecord
from colo_plane.coordinator.wanted import Result, Wanted, requests
from colo_plane.rpc import duration

log = logging.getLogger(__name__)

ARM_RETRY: Final = 0.2  # seconds after a failed checkpoint before the next epoch is armed
# A primary that asks for a checkpoint this long after its epoch was armed
# never got the arm: commands do not reach it.  It asks only after a whole
# tick without an armed epoch.  One of the failure detector's signals
# (docs/coordinator.md, "Failure detection").
ARM_LOST_AFTER: Final = 0.1

# want(domain, trigger) -> (epoch, coalesced, None): the driver's.
Want = Callable[[str, colo_pb2.CheckpointTrigger], tuple[int, bool, Result | None]]


@dataclass
class Armed:
    """An armed epoch in flight: the call that armed it, and its firing."""

    wanted: Wanted
    req: colo_pb2.AgentCheckpointRequest  # the call that armed it
    sent: float = 0.0  # loop.time() the arming call was sent
    fired: bool = False  # the coordinator asked for it now (wanted.trigger says why)
    fire: Result | None = None  # the second call


class Arming:
    def __init__(
        self, machine: PairMachine, registry: AgentRegistry, call_timeout: Callable[[PairRecord], float]
    ) -> None:
        self.machine = machine
        self.registry = registry
        self.call_timeout = call_timeout  # a firing call's deadline, the checkpoint's own
        self.on_unreachable: Callable[[str], None] | None = None
        self.want: Want | None = None  # the driver's, for the fallback request

    # -- arming ---------------------------------------------------------------------

    def arm(self, rec: PairRecord, epoch: int, wanted: Wanted, req: colo_pb2.AgentCheckpointRequest) -> Armed:
        """req becomes the arming call of epoch: the pair stays PROTECTED, the
        epoch pending (no ISSUED until it starts)."""
        req.arm.CopyFrom(duration(wanted.arm))
        self.machine.checkpoint_armed(rec, epoch)
        return Armed(wanted, req)

    @staticmethod
    def sent(armed: Armed) -> None:
        armed.sent = asyncio.get_running_loop().time()

    @staticmethod
    def calls(armed: Armed | None) -> list[Result]:
        """The firing call in flight, if any."""
        return [armed.fire] if armed is not None and armed.fire is not None else []

    # -- firing ---------------------------------------------------------------------

    def join(
        self, rec: PairRecord, armed: Armed, trigger: colo_pb2.CheckpointTrigger, wait: bool
    ) -> tuple[int, bool, Result | None]:
        """The armed checkpoint serves a wanted one: fired now, unless it was already."""
        coalesced = armed.fired
        if (
            trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST
            and not armed.fired
            and asyncio.get_running_loop().time() - armed.sent > ARM_LOST_AFTER
            and self.on_unreachable is not None
        ):
            self.on_unreachable(rec.pair.primary_host)  # its arm never arrived: confirm it hears us
        self.fire(rec, armed, trigger)
        future = armed.wanted.waiter() if wait else None
        requests(trigger, coalesced).inc()
        return rec.pair.pending_epoch, coalesced, future

    def fire(self, rec: PairRecord, armed: Armed | None, trigger: colo_pb2.CheckpointTrigger) -> None:
        """A second Agent.Checkpoint for the armed epoch: it starts now (its answer
        is the armed call's; this call's own is only logged)."""
        if armed is None or armed.fired:
            return
        wanted, req = armed.wanted, armed.req
        armed.fired, wanted.trigger, wanted.since = True, trigger, time.perf_counter()
        try:
            client = self.registry.client(rec.pair.primary_host)
        except HostNotRegistered:
            return  # the armed call fails on its own
        fire = colo_pb2.AgentCheckpointRequest()
        fire.CopyFrom(req)
        fire.ClearField("arm")
        fire.trigger = trigger
        armed.fire = asyncio.ensure_future(client.checkpoint(fire, timeout=self.call_timeout(rec) + 1.0))
        armed.fire.add_done_callback(functools.partial(self._fired, rec.domain, req.epoch))

    @staticmethod
    def _fired(domain: str, epoch: int, call: Result) -> None:
        if not call.cancelled() and call.exception() is not None:
            log.debug("%s: firing armed epoch %d: %s", domain, epoch, call.exception())

    # -- the answer -------------------------------------------------------------------

    @staticmethod
    async def answered(call: Result, armed: Armed) -> Result:
        """The call that answers for the checkpoint.  A fired armed epoch: if the
        second call overtook the armed one on the wire, the agent ran the
        epoch for it and refused the armed call as not above its last epoch;
        the second call's answer is the checkpoint's then."""
        fire = armed.fire
        if fire is None or call.cancelled() or call.exception() is None:
            return call
        await asyncio.wait({fire})
        return fire if not fire.cancelled() and fire.exception() is None else call

    def started(
        self, rec: PairRecord, epoch: int, armed: Armed, resp: colo_pb2.AgentCheckpointResponse
    ) -> bool:
        """An armed checkpoint came back: recorded as issued when it started.
        True when it was fired (it started when asked: the caller records it
        as issued at wanted.since); otherwise recorded here, as the primary says."""
        if armed.fired:
            return True
        wanted = armed.wanted
        wanted.trigger = resp.trigger or colo_pb2.CHECKPOINT_TRIGGER_TIMER
        if wanted.trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST:
            # The primary's proxy held a reply: the armed epoch started at once.
            self._divergence(
                rec, epoch=epoch, host=rec.pair.primary_host, reason=resp.reason, request_seq=resp.request_seq
            )
        self.machine.checkpoint_issued(rec, epoch, wanted.trigger)
        return False

    # -- the fallback request ----------------------------------------------------------

    def requested(self, rec: PairRecord, req: colo_pb2.RequestCheckpointRequest) -> tuple[int, bool]:
        """A RequestCheckpoint from the pair's primary (checked by the caller):
        the checkpoint is wanted (an armed epoch is fired); (epoch, coalesced)."""
        assert self.want is not None
        epoch, coalesced, _ = self.want(rec.domain, colo_pb2.CHECKPOINT_TRIGGER_REQUEST)
        self._divergence(
            rec,
            epoch=epoch,
            host=req.host_id,
            reason=req.reason,
            request_seq=req.request_seq,
            message=req.detail,
        )
        return epoch, coalesced

    def _divergence(
        self,
        rec: PairRecord,
        *,
        epoch: int,
        host: str,
        reason: int,
        request_seq: int,
        message: str = "",
    ) -> None:
        """The primary's proxy held a reply: counted and recorded here only,
        whether the armed epoch started at it or the primary asked."""
        rec.pair.divergences += 1
        self.machine.emit(
            rec,
            colo_pb2.EVENT_KIND_CHECKPOINT_REQUESTED,
            epoch=epoch,
            host_id=host,
            reason=reason,
            request_seq=request_seq,
            message=message,
        )
