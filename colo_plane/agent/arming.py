"""The primary's epoch scheduler (docs/protocol.md, "Armed checkpoints"):
everything about when a checkpoint of one primary starts, in one place.

- The arm: the domain's native.Arm (native/arm.c), which the proxy only
  reports held replies into.  An armed Agent.Checkpoint waits on it, in C,
  and starts at the first held reply, a second call for its epoch (fire)
  or when its time passes; a cancelled one is disarmed.
- The fallback: when nothing has been armed here for a whole tick while
  replies are held, or never (a coordinator run with
  --no-arm-checkpoints), it asks the coordinator (RequestCheckpoint), one
  request at a time, for the newest held reply.
- What started a checkpoint, as the Agent API says it: the trigger, and
  for a held reply its reason and request_seq (the same reasons a
  RequestCheckpoint carries).

The proxy (proxy.py) tells it each batch of held replies, each checkpoint
that covered some, and its ticks; it decides nothing about checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc

from colo_plane import native
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.rpc import RpcError

log = logging.getLogger(__name__)

TICK: Final = 0.5  # seconds: the proxy's tick; a held reply's checkpoint asked for again
RETRY_AFTER_FAILURE: Final = 0.1
RPC_TIMEOUT: Final = 2.0

ARMED_TRIGGERS: Final = {
    native.ArmWhy.DIVERGENCE: colo_pb2.CHECKPOINT_TRIGGER_REQUEST,
    native.ArmWhy.TIMER: colo_pb2.CHECKPOINT_TRIGGER_TIMER,
    native.ArmWhy.FIRED: colo_pb2.CHECKPOINT_TRIGGER_MANUAL,
}
PROXY_REASONS: Final = {
    "mismatch": colo_pb2.CHECKPOINT_REQUEST_REASON_OUTPUT_MISMATCH,
    "timeout": colo_pb2.CHECKPOINT_REQUEST_REASON_REPLY_TIMEOUT,
}

Answer = asyncio.Future[colo_pb2.AgentCheckpointResponse]
Done = TypeVar("Done")
# The pair as this host holds it now: (generation, epoch).
PairNow = Callable[[], tuple[int, int]]


@dataclass
class Armed:
    """An armed checkpoint waiting on the arm."""

    epoch: int
    generation: int
    answer: Answer  # for a second call that fires it


def started_by(resp: colo_pb2.AgentCheckpointResponse, why: native.ArmResult) -> None:
    """An armed checkpoint's answer says what started it."""
    resp.trigger = ARMED_TRIGGERS[why.why]
    if why.why is native.ArmWhy.DIVERGENCE:
        resp.reason = PROXY_REASONS[why.reason]
        resp.request_seq = why.seq


class Arming:
    """One primary's armed checkpoints and its fallback requests."""

    def __init__(
        self,
        domain: str,
        *,
        host_id: str,
        coordinator: colo_pb2_grpc.CoordinatorStub | None,
        pair: PairNow,
    ) -> None:
        self.domain = domain
        self.host_id = host_id
        self.coordinator = coordinator
        self.pair = pair
        self.arm = native.Arm()  # the proxy reports held replies into it
        self.armed: Armed | None = None
        self._first_armed: Callable[[], None] | None = None
        self._armed_ever = False
        self._unarmed_since = 0.0  # loop time the last armed checkpoint ended
        self._want = 0  # highest held seq a checkpoint must include
        self._want_reason = "mismatch"
        self._asked = 0  # highest seq the coordinator promised a checkpoint for
        self._asked_at = 0.0  # loop time of that promise
        self._covered = 0
        self._asker: asyncio.Task[None] | None = None
        self._closed = False

    # -- armed checkpoints ------------------------------------------------------------

    def on_first_arm(self, callback: Callable[[], None]) -> None:
        """callback runs when the first checkpoint is armed here (the proxy then
        reads its events on the tick only: C serves held replies)."""
        self._first_armed = callback

    def waiter(self, epoch: int, seconds: float) -> Callable[[], native.ArmResult]:
        """The blocking wait of an armed epoch (run on the checkpoint's thread,
        right before the checkpoint): native.Disarmed if it never starts."""
        return lambda: self.arm.await_divergence(epoch, seconds)

    async def run(
        self,
        req: colo_pb2.AgentCheckpointRequest,
        checkpoint: Awaitable[Done],
        answer: Callable[[Done], colo_pb2.AgentCheckpointResponse],
    ) -> Done:
        """Holds req's epoch armed while checkpoint runs (it waits on waiter(),
        then checkpoints); a second call for the epoch gets the same answer.
        Cancelled or failed before it started: disarmed, so it never starts."""
        future: Answer = asyncio.get_running_loop().create_future()
        self.armed = Armed(req.epoch, req.generation, future)
        self._waiting()
        try:
            outcome = await checkpoint
            future.set_result(answer(outcome))
            return outcome
        except BaseException as exc:
            self.arm.disarm(req.epoch)  # cancelled before it started: it must not start later
            if not isinstance(exc, Exception):
                exc = RpcError(
                    grpc.StatusCode.ABORTED,
                    f"armed epoch {req.epoch} was cancelled",
                    reason=colo_pb2.ERROR_REASON_NEVER_STARTED,
                )
            future.set_exception(exc)
            future.exception()  # nobody may be waiting: no "never retrieved" warning
            raise
        finally:
            self.armed = None
            self._unarmed_since = asyncio.get_running_loop().time()

    def _waiting(self) -> None:
        if not self._armed_ever and self._first_armed is not None:
            self._first_armed()
        self._armed_ever = True

    def fire(self, epoch: int, generation: int) -> Answer | None:
        """A second call for the armed epoch: it starts now; its answer is the
        armed call's.  None when that epoch is not armed here."""
        armed = self.armed
        if armed is None or armed.epoch != epoch or armed.generation != generation:
            return None
        self.arm.fire(epoch)  # the coordinator wants the armed epoch now
        return armed.answer

    def disarm(self) -> None:
        """Ends an armed checkpoint that has not started (it holds busy while it waits)."""
        if self.armed is not None:
            self.arm.disarm(self.armed.epoch)

    # -- what the proxy tells ---------------------------------------------------------

    def held(self, seq: int, reason: str | None = None) -> None:
        """Replies up to seq are held (reason: the newest's; None keeps the last)."""
        if seq > self._want:
            self._want = seq
            if reason is not None:
                self._want_reason = reason
        self._kick()

    def covered(self, last_seq: int) -> None:
        """A checkpoint covers every request <= last_seq: nothing left to ask for."""
        self._covered = max(self._covered, last_seq)

    def tick(self) -> None:
        """A reply still held long after its checkpoint was promised is asked
        for again (a checkpoint can fail)."""
        if self._asked > self._covered and asyncio.get_running_loop().time() - self._asked_at > 2 * TICK:
            self._asked = self._covered
        self._kick(tick=True)

    # -- the fallback request -----------------------------------------------------------

    def _kick(self, *, tick: bool = False) -> None:
        if self._closed:
            return
        if self._armed_ever and not self._unarmed(tick):
            return  # the armed checkpoint serves held replies, no need to ask
        if self._asker is None and self._want > max(self._covered, self._asked):
            self._asker = asyncio.create_task(self._ask(), name=f"proxy-asker-{self.domain}")

    def _unarmed(self, tick: bool) -> bool:
        """Nothing armed for a whole tick although replies are held: ask after all."""
        idle = asyncio.get_running_loop().time() - self._unarmed_since
        return tick and self.armed is None and idle > TICK

    async def _ask(self) -> None:
        """One RequestCheckpoint at a time, for the newest held reply: the
        checkpoint it brings includes every reply held before it was sent."""
        try:
            while self._want > max(self._covered, self._asked):
                seq, reason = self._want, self._want_reason
                if await self._request(seq, reason):
                    self._asked, self._asked_at = seq, asyncio.get_running_loop().time()
                else:
                    await asyncio.sleep(RETRY_AFTER_FAILURE)
        finally:
            self._asker = None

    async def _request(self, seq: int, reason: str) -> bool:
        """Asks the coordinator for a checkpoint including request seq (outputs
        diverged); True once it took the request."""
        if self.coordinator is None:
            return False
        generation, epoch = self.pair()
        req = colo_pb2.RequestCheckpointRequest(
            domain=self.domain,
            generation=generation,
            epoch=epoch,
            host_id=self.host_id,
            request_seq=seq,
            reason=PROXY_REASONS[reason],
        )
        try:
            await self.coordinator.RequestCheckpoint(req, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "%s: checkpoint request for request %d failed: %s",
                self.domain,
                seq,
                exc.details() or exc.code().name,
            )
            return False
        return True

    async def close(self) -> None:
        """Stops asking: the proxy whose replies were held is closing."""
        self._closed = True
        self.disarm()
        if self._asker is not None:
            self._asker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asker
