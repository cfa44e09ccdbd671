"""Small helpers shared by the gRPC servers and clients: the error that
becomes a status with the canonical code and a message that says what to
do, and conversions.  Field bounds are colo_plane.spec's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class RpcError(Exception):
    """Raised inside servicer logic; the server turns it into a status.
    ``reason`` names the refusal for metrics where the code alone is too
    coarse (colo_sync_reports_refused_total); it defaults to the code."""

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name.lower()


def fail(code: grpc.StatusCode, message: str, *, reason: str = "") -> NoReturn:
    raise RpcError(code, message, reason=reason)


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
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises
