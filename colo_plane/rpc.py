"""Small helpers shared by the gRPC servers and clients: the error that
becomes a status with the canonical code, a machine-readable reason (a
google.rpc.ErrorInfo in the status details) and a message that says what
to do; reading that reason back from a failed call; conversions.  Field
bounds are colo_plane.spec's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from colo_plane._proto import colo_pb2

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

ERROR_DOMAIN = "colo.v1"
DETAILS_KEY = "grpc-status-details-bin"
_PREFIX = "ERROR_REASON_"


def reason_name(reason: colo_pb2.ErrorReason) -> str:
    """ "STALE_GENERATION": what ErrorInfo.reason carries."""
    return colo_pb2.ErrorReason.Name(reason).removeprefix(_PREFIX)


def reason_label(reason: colo_pb2.ErrorReason) -> str:
    """ "stale_generation": the same, as a metric label."""
    return reason_name(reason).lower()


class RpcError(Exception):
    """Raised inside servicer logic; the server turns it into a status with
    the reason in its ErrorInfo (and metadata, e.g. the field or the C
    error code's name)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: colo_pb2.ErrorReason,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})

    def trailers(self) -> tuple[tuple[str, bytes], ...]:
        """The status details a client reads the reason from."""
        info = error_details_pb2.ErrorInfo(
            reason=reason_name(self.reason), domain=ERROR_DOMAIN, metadata=self.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return ((DETAILS_KEY, status.SerializeToString()),)


def fail(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: colo_pb2.ErrorReason,
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    raise RpcError(code, message, reason=reason, metadata=metadata)


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a failed call carries (None: the server sent none,
    e.g. gRPC itself failed the call: UNAVAILABLE, DEADLINE_EXCEEDED)."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in cast(Iterable[tuple[str, Any]], trailers or ()):
        if key == DETAILS_KEY and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                    return info
    return None


def reason_of(exc: grpc.RpcError) -> colo_pb2.ErrorReason:
    """The ErrorReason of a failed call (UNSPECIFIED when it carries none)."""
    info = error_info(exc)
    if info is None or _PREFIX + info.reason not in colo_pb2.ErrorReason.keys():  # noqa: SIM118 (an EnumTypeWrapper, not a dict)
        return colo_pb2.ERROR_REASON_UNSPECIFIED
    return cast(colo_pb2.ErrorReason, colo_pb2.ErrorReason.Value(_PREFIX + info.reason))


def seconds(d: duration_pb2.Duration, default: float) -> float:
    """A Duration field in seconds, or default when unset (zero)."""
    value = d.seconds + d.nanos / 1e9
    return value if value > 0 else default


def duration(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


async def answer(fn: Callable[[Req], Awaitable[Resp]], request: Req, context: Context) -> Resp:
    """Runs a servicer's logic; an RpcError becomes the call's status."""
    try:
        return await fn(request)
    except RpcError as exc:
        await context.abort(exc.code, exc.message, trailing_metadata=exc.trailers())
        raise  # unreachable: abort raises
