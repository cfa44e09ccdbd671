"""The C side's numbers and result records (native/colo.h, native/stream_format.h), checked at import."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Final

from colo_plane.native._ffi import ffi, lib

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_PFNS_PER_RECORD",
    "PAGE_SIZE",
    "PROXY_OUTPUT_MAX",
    "PROXY_OUTPUT_MIN",
    "PROXY_REASONS",
    "ArmResult",
    "ArmWhy",
    "CheckpointResult",
    "ControlId",
    "Direction",
    "DomainHash",
    "DomainType",
    "ErrorCode",
    "Event",
    "EventKind",
    "MirrorResult",
    "Pattern",
    "ProxyEvent",
    "ProxyEventKind",
    "ProxyStats",
    "RecordType",
]

PAGE_SIZE: Final = int(lib.COLO_PAGE_SIZE)
MAX_PFNS_PER_RECORD: Final = int(lib.COLO_MAX_PFNS_PER_RECORD)
MAX_CONTEXT_BYTES: Final = int(lib.COLO_MAX_CONTEXT_BYTES)
PROXY_OUTPUT_MAX: Final = int(lib.COLO_PROXY_OUTPUT_MAX)  # a client's unsent output, by default
PROXY_OUTPUT_MIN: Final = int(lib.COLO_PROXY_OUTPUT_MIN)


# ---- enums ---------------------------------------------------------------------


class ErrorCode(enum.IntEnum):
    """C error codes (enum colo_error in native/colo.h)."""

    OK = 0
    NOMEM = 1
    INVAL = 2
    IO = 3
    TIMEOUT = 4
    EOF = 5
    TRUNCATED = 6
    BAD_MAGIC = 7
    BAD_ID = 8
    BAD_VERSION = 9
    BAD_OPTIONS = 10
    BAD_DOMAIN_HEADER = 11
    UNKNOWN_RECORD = 12
    RECORD_TOO_LONG = 13
    BAD_LENGTH = 14
    BAD_PADDING = 15
    PFN_RANGE = 16
    WRONG_DIRECTION = 17
    BAD_CONTROL_ID = 18
    STALE_GENERATION = 19
    PROTOCOL = 20
    NOT_PAUSED = 21
    BACKEND = 22
    NO_HYPERVISOR = 23
    NOT_BUILT = 24
    NOT_FOUND = 25
    PERMISSION = 26
    UNSUPPORTED = 27
    SERVICE = 28
    PAUSED = 29
    DUPLICATE = 30
    DISARMED = 31
    WRONG_GENERATION = 32


class RecordType(enum.IntEnum):
    """Stream record types (native/stream_format.h, docs/stream.md)."""

    END = 0x00
    PAGE_DATA = 0x01
    HVM_CONTEXT = 0x09
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    CHECKPOINT_STATE = 0x1005  # libxl's record 5, in the 0x1000 block
    CHECKPOINT_INFO = 0x2000  # colo-plane's own: a checkpoint's claims, right before its CHECKPOINT


class ControlId(enum.IntEnum):
    """COLO sync points (the seed's control ids; native/stream_format.h)."""

    CHECKPOINT_REQUEST = 0
    SECONDARY_SUSPENDED = 1
    SECONDARY_READY = 2
    SECONDARY_RESUMED = 3


class Direction(enum.IntEnum):
    FORWARD = 0  # primary -> secondary: state
    BACK = 1  # secondary -> primary: back channel


class EventKind(enum.IntEnum):
    CONTROL = 1
    DIRTY = 2
    VERIFY = 3
    CHECKPOINT = 4
    END = 5


class Pattern(enum.IntEnum):
    UNIFORM = 0
    HOTSET = 1


class DomainType(enum.IntEnum):
    X86_PV = 1
    X86_HVM = 2
    X86_PVH = 3
    SIM = 0x4353


class ProxyEventKind(enum.IntEnum):
    HOLD = 1  # a reply is held: ask for a checkpoint including seq
    RELEASE = 2  # a held reply left: checkpoint epoch resumed
    LINK_LOST = 3  # the link to the secondary failed; output is held


class ArmWhy(enum.IntEnum):
    """What started an armed checkpoint."""

    DIVERGENCE = 1  # a reply was held
    TIMER = 2  # the arm's time ran out
    FIRED = 3  # fire(): the coordinator wants it now


# enum colo_proxy_reason: why a reply is held
PROXY_REASONS: Final[Mapping[int, str]] = MappingProxyType({1: "mismatch", 2: "timeout"})


# ---- result records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainHash:
    """xxh64 over every page's hash, and over the vCPU context."""

    memory: int
    context: int


@dataclass(frozen=True, slots=True)
class Event:
    """What StreamReader.next() read (struct colo_event): one sync point,
    dirty list, verify, applied checkpoint or end of stream."""

    kind: EventKind
    control_id: int
    generation: int
    epoch: int
    last_seq: int
    pages: int
    memory_hash: int
    context_hash: int
    bytes: int
    page_hashes: bool


@dataclass(frozen=True)
class CheckpointResult:
    """What one side's checkpoint call did (struct colo_ckpt_result)."""

    epoch: int
    t_request_ns: int
    t_suspended_ns: int
    t_resumed_ns: int
    pause_ns: int
    dirty_a: int
    dirty_b: int
    dirty_d: int
    pages: int
    bytes: int
    last_seq: int
    memory_hash: int
    context_hash: int
    suspended_memory_hash: int
    suspended_context_hash: int
    peer_memory_hash: int
    peer_context_hash: int
    peer_page_hashes: int


@dataclass(frozen=True)
class ProxyEvent:
    kind: ProxyEventKind
    reason: str  # HOLD: "mismatch" or "timeout"
    seq: int
    epoch: int
    t_ns: int  # CLOCK_MONOTONIC
    code: int
    detail: str


@dataclass(frozen=True)
class ProxyStats:
    """The proxy's counters (struct colo_proxy_stats)."""

    requests: int = 0
    held: int = 0
    mismatches: int = 0
    timeouts: int = 0
    clients: int = 0
    clients_refused: int = 0
    last_seq: int = 0
    covered: int = 0
    events_lost: int = 0
    backpressure: int = 0  # times a client was paused: its unsent output reached the bound
    clients_paused: int = 0  # now
    output_bytes: int = 0  # reply bytes owed to clients now, written to no socket yet


@dataclass(frozen=True)
class ArmResult:
    why: ArmWhy
    reason: str  # DIVERGENCE: "mismatch" or "timeout" of the newest held reply
    seq: int  # ... and its seq
    t_ns: int  # CLOCK_MONOTONIC when the wait ended


@dataclass(frozen=True)
class MirrorResult:
    finished: bool
    code: int  # why it ended (EOF: the primary closed the link)
    served: int
    skipped: int  # requests a checkpoint already carried
    detail: str


# ---- checked against the C side ------------------------------------------------------

# Each enum, the prefix of its C constants, and whether every C constant of
# that prefix must have a member (the wire's and the errors' numbers: a code
# or record added in C alone would otherwise surface as a bare int).
_ENUMS: Final = (
    (ErrorCode, "COLO_E_", True),
    (RecordType, "COLO_REC_", True),
    (ControlId, "COLO_CTL_", True),
    (Direction, "COLO_DIR_", True),
    (EventKind, "COLO_EV_", True),
    (Pattern, "COLO_PATTERN_", True),
    (DomainType, "COLO_DOMTYPE_", True),
    (ProxyEventKind, "COLO_PX_", False),  # the prefix is shared with enum colo_proxy_reason
    (ArmWhy, "COLO_ARM_", False),  # COLO_ARM_NONE is never handed out
)
# Records built field by field from a C struct of the same field names.
_STRUCTS: Final = (
    (Event, "struct colo_event"),
    (CheckpointResult, "struct colo_ckpt_result"),
    (ProxyStats, "struct colo_proxy_stats"),
)


def _c_name(prefix: str, member: enum.IntEnum) -> str:
    return "COLO_OK" if member.name == "OK" and prefix == "COLO_E_" else prefix + member.name


def _check_abi() -> None:
    """The numbers and records here are native/*.h's, or the import fails."""
    for enum_type, prefix, complete in _ENUMS:
        for member in enum_type:
            name = _c_name(prefix, member)
            if getattr(lib, name, None) != member.value:
                raise ImportError(f"{name} differs between native/*.h and colo_plane/native/abi.py")
        if complete:
            ours = {_c_name(prefix, m) for m in enum_type}
            extra = sorted(n for n in dir(lib) if n.startswith(prefix) and n not in ours)
            if extra:
                raise ImportError(f"{', '.join(extra)} in native/*.h but not in {enum_type.__name__}")
    for reason, text in PROXY_REASONS.items():
        if getattr(lib, f"COLO_PX_{text.upper()}", None) != reason:
            raise ImportError(f"proxy reason {text} differs between native/colo.h and PROXY_REASONS")
    for record, struct in _STRUCTS:
        c_fields = {name for name, _ in ffi.typeof(struct).fields}
        missing = [f.name for f in fields(record) if f.name not in c_fields]
        if missing:
            raise ImportError(f"{record.__name__} fields {missing} are not in {struct}")


_check_abi()
