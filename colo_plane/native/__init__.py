"""Typed wrapper over the native data plane: the public face of colo_plane.native.

The package is the only code that touches cffi's ``ffi``/``lib`` (through
its private ``_ffi`` module).  It checks arguments before calling C, turns
every nonzero C return into an exception carrying the C message (one table:
``errors.ERRORS``), and owns every native buffer.  The blocking calls
(stream reads and writes, hashing, a checkpoint) release the GIL, so callers
run them in a thread (``asyncio.to_thread``) to keep an event loop serving.

Modules, each importing only those above it:

- ``_ffi``: the compiled module, checked against the package version;
- ``abi``: the C side's enums, constants and result records, checked at import;
- ``errors``: NativeError and its subclasses, the code-to-class table;
- ``bitmap``, ``domain``, ``stream``, ``arm``, ``proxy``, ``checkpoint``: one concern each;
- ``testhooks``: the switches that break a checkpoint on purpose, for tests only.
"""

from __future__ import annotations

from colo_plane.native._ffi import version, xen_built
from colo_plane.native.abi import (
    MAX_CONTEXT_BYTES,
    MAX_PFNS_PER_RECORD,
    PAGE_SIZE,
    PROXY_OUTPUT_MAX,
    PROXY_OUTPUT_MIN,
    PROXY_REASONS,
    ArmResult,
    ArmWhy,
    CheckpointResult,
    ControlId,
    Direction,
    DomainHash,
    DomainType,
    ErrorCode,
    Event,
    EventKind,
    MirrorResult,
    Pattern,
    ProxyEvent,
    ProxyEventKind,
    ProxyStats,
    RecordType,
)
from colo_plane.native.arm import Arm
from colo_plane.native.bitmap import Bitmap
from colo_plane.native.checkpoint import primary_checkpoint, secondary_checkpoint
from colo_plane.native.domain import Domain, PageHashes, ReplyBuffer
from colo_plane.native.errors import (
    BackendError,
    Disarmed,
    InvalidArgument,
    NativeError,
    StreamClosed,
    StreamError,
    StreamTimeout,
)
from colo_plane.native.proxy import MAX_POLL_US, Mirror, Proxy
from colo_plane.native.stream import CHECKPOINT_END_BYTES, StreamReader, StreamWriter, page_data_bytes
from colo_plane.native.testhooks import TestHooks

__all__ = [
    "CHECKPOINT_END_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_PFNS_PER_RECORD",
    "MAX_POLL_US",
    "PAGE_SIZE",
    "PROXY_OUTPUT_MAX",
    "PROXY_OUTPUT_MIN",
    "PROXY_REASONS",
    "Arm",
    "ArmResult",
    "ArmWhy",
    "BackendError",
    "Bitmap",
    "CheckpointResult",
    "ControlId",
    "Direction",
    "Disarmed",
    "Domain",
    "DomainHash",
    "DomainType",
    "ErrorCode",
    "Event",
    "EventKind",
    "InvalidArgument",
    "Mirror",
    "MirrorResult",
    "NativeError",
    "PageHashes",
    "Pattern",
    "Proxy",
    "ProxyEvent",
    "ProxyEventKind",
    "ProxyStats",
    "RecordType",
    "ReplyBuffer",
    "StreamClosed",
    "StreamError",
    "StreamReader",
    "StreamTimeout",
    "StreamWriter",
    "TestHooks",
    "page_data_bytes",
    "primary_checkpoint",
    "secondary_checkpoint",
    "version",
    "xen_built",
]
