"""The exceptions a failed C call raises, and the one table from C error code to exception class."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NoReturn

from colo_plane.native._ffi import ffi, lib
from colo_plane.native.abi import CheckpointResult, ErrorCode

__all__ = [
    "ERRORS",
    "BackendError",
    "Disarmed",
    "InvalidArgument",
    "NativeError",
    "StreamClosed",
    "StreamError",
    "StreamTimeout",
]


class NativeError(Exception):
    """A C call failed; ``code`` says how, ``detail`` is the C message."""

    def __init__(self, code: int, detail: str) -> None:
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        self.detail = detail
        self.checkpoint: CheckpointResult | None = None  # a checkpoint call's steps up to the failure
        text = ffi.string(lib.colo_strerror(code)).decode()
        super().__init__(f"{text}: {detail}" if detail else text)


class InvalidArgument(NativeError, ValueError):
    """The caller passed something the C side refused."""


class StreamError(NativeError):
    """The peer sent a malformed or out-of-place record: drop the connection."""


class StreamClosed(NativeError):
    """The peer closed the connection, cleanly (EOF) or inside a record."""


class StreamTimeout(NativeError, TimeoutError):
    """The peer sent nothing within the timeout."""


class BackendError(NativeError):
    """The hypervisor backend failed or is not available here."""


class Disarmed(NativeError):
    """An armed checkpoint ended without starting (disarmed, unprotected, link lost)."""


# Every C error code and the class it raises (a code C returns that is not
# in ErrorCode raises NativeError).  Checked complete at import.
ERRORS: Final[Mapping[ErrorCode, type[NativeError]]] = MappingProxyType(
    {
        ErrorCode.NOMEM: NativeError,
        ErrorCode.INVAL: InvalidArgument,
        ErrorCode.IO: StreamClosed,
        ErrorCode.TIMEOUT: StreamTimeout,
        ErrorCode.EOF: StreamClosed,
        ErrorCode.TRUNCATED: StreamClosed,
        ErrorCode.BAD_MAGIC: StreamError,
        ErrorCode.BAD_ID: StreamError,
        ErrorCode.BAD_VERSION: StreamError,
        ErrorCode.BAD_OPTIONS: StreamError,
        ErrorCode.BAD_DOMAIN_HEADER: StreamError,
        ErrorCode.UNKNOWN_RECORD: StreamError,
        ErrorCode.RECORD_TOO_LONG: StreamError,
        ErrorCode.BAD_LENGTH: StreamError,
        ErrorCode.BAD_PADDING: StreamError,
        ErrorCode.PFN_RANGE: StreamError,
        ErrorCode.WRONG_DIRECTION: StreamError,
        ErrorCode.BAD_CONTROL_ID: StreamError,
        ErrorCode.STALE_GENERATION: StreamError,
        ErrorCode.PROTOCOL: StreamError,
        ErrorCode.NOT_PAUSED: BackendError,
        ErrorCode.BACKEND: BackendError,
        ErrorCode.NO_HYPERVISOR: BackendError,
        ErrorCode.NOT_BUILT: BackendError,
        ErrorCode.NOT_FOUND: BackendError,
        ErrorCode.PERMISSION: BackendError,
        ErrorCode.UNSUPPORTED: BackendError,
        ErrorCode.SERVICE: BackendError,
        ErrorCode.PAUSED: BackendError,
        ErrorCode.DUPLICATE: BackendError,
        ErrorCode.DISARMED: Disarmed,
        ErrorCode.WRONG_GENERATION: StreamError,
    }
)


def _check_table() -> None:
    """A code added to ErrorCode without a class here fails the import, not a caller."""
    missing = [code.name for code in ErrorCode if code != ErrorCode.OK and code not in ERRORS]
    if missing or ErrorCode.OK in ERRORS:
        raise ImportError(f"colo_plane.native.errors.ERRORS: no class for {missing} (or one for OK)")


_check_table()


def _raise(code: int) -> NoReturn:
    """Raises the class of code (ERRORS) with this thread's C message."""
    detail = ffi.string(lib.colo_last_error()).decode(errors="replace")
    cls = ERRORS.get(ErrorCode(code), NativeError) if code in ErrorCode._value2member_map_ else NativeError
    raise cls(code, detail)


def _check(code: int) -> None:
    """Every nonzero C return raises."""
    if code != 0:
        _raise(code)
