"""What the replication roles hand to the rest of the agent: sync points
(to report to the coordinator) and the figures of a checkpoint."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from colo_plane.native import ControlId


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
