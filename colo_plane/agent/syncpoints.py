"""What the replication roles hand to the rest of the agent: sync points
(to report to the coordinator) and the figures of a checkpoint."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from colo_plane._proto import colo_pb2
from colo_plane.native import CheckpointResult, ControlId


class Role(enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


@dataclass
class Stats:
    """One checkpoint as one side measured it (CheckpointStats in the proto)."""

    pages: int = 0
    bytes: int = 0
    dirty_a: int = 0
    dirty_b: int = 0
    dirty_d: int = 0
    pause_ns: int = 0
    duration_ns: int = 0
    last_seq: int = 0

    @classmethod
    def of(cls, r: CheckpointResult, *, sent_bytes: int | None = None) -> Stats:
        """A checkpoint call's figures (struct colo_ckpt_result), the one conversion."""
        return cls(
            pages=r.pages,
            bytes=r.bytes if sent_bytes is None else sent_bytes,
            dirty_a=r.dirty_a,
            dirty_b=r.dirty_b,
            dirty_d=r.dirty_d,
            pause_ns=r.pause_ns,
            duration_ns=r.t_resumed_ns - r.t_request_ns,
            last_seq=r.last_seq,
        )

    def proto(self) -> colo_pb2.CheckpointStats:
        return colo_pb2.CheckpointStats(
            pages=self.pages,
            bytes=self.bytes,
            dirty_a_pages=self.dirty_a,
            dirty_b_pages=self.dirty_b,
            dirty_d_pages=self.dirty_d,
            pause_ns=self.pause_ns,
            duration_ns=self.duration_ns,
            last_seq=self.last_seq,
        )


@dataclass
class Verify:
    """Verify mode's verdict (VerifyResult in the proto)."""

    checked: bool = False
    match: bool = False
    memory_hash: int = 0
    context_hash: int = 0
    mismatched_pages: int = 0
    mismatched_pfns: list[int] = field(default_factory=list)
    context_mismatch: bool = False

    def proto(self) -> colo_pb2.VerifyResult:
        if not self.checked:
            return colo_pb2.VerifyResult()
        return colo_pb2.VerifyResult(
            outcome=colo_pb2.VERIFY_OUTCOME_MATCH if self.match else colo_pb2.VERIFY_OUTCOME_MISMATCH,
            memory_hash=self.memory_hash,
            context_hash=self.context_hash,
            mismatched_pfns=self.mismatched_pfns,
            mismatched_pages=self.mismatched_pages,
            context_mismatch=self.context_mismatch,
        )


@dataclass(frozen=True)
class SyncPoint:
    domain: str
    generation: int
    epoch: int
    control_id: ControlId
    role: Role
    monotonic_ns: int
    stats: Stats
    verify: Verify | None = None


# Called from the replication threads; must be thread-safe and not block.
SyncSink = Callable[[SyncPoint], None]


def now_ns() -> int:
    return time.monotonic_ns()
