"""What a pair's next checkpoint is wanted for, and who waits for it: the
record the checkpoint driver (checkpoints.py) and the arming module
(arming.py) share, and the answer each waiter gets."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

import grpc
from prometheus_client import Counter

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.coordinator.statemachine import trigger_name

Result = asyncio.Future[colo_pb2.AgentCheckpointResponse]


class CheckpointError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.cache
def requests(trigger: int, coalesced: bool) -> Counter:
    """colo_checkpoint_requests_total{trigger, coalesced}."""
    return metrics.CHECKPOINT_REQUESTS.labels(trigger_name(trigger), "true" if coalesced else "false")


@dataclass
class Wanted:
    """The next checkpoint of a pair: why, since when, and who waits for it."""

    trigger: colo_pb2.CheckpointTrigger
    since: float  # time.perf_counter() of the first request it serves
    waiters: list[Result] = field(default_factory=list)
    final: bool = False
    arm: float = 0.0  # armed: the primary starts it at a held reply or after this many seconds

    def waiter(self) -> Result:
        """A future of the checkpoint's answer."""
        future: Result = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        return future

    def resolve(
        self, *, resp: colo_pb2.AgentCheckpointResponse | None = None, error: BaseException | None = None
    ) -> None:
        """Every waiter gets resp, or error."""
        for future in self.waiters:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                assert resp is not None
                future.set_result(resp)
