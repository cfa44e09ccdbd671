"""Small helpers shared by the gRPC servers and clients: argument checks
that abort with the canonical code and a message that says what to do,
and conversions."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class RpcError(Exception):
    """Raised inside servicer logic; the server turns it into a status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fail(code: grpc.StatusCode, message: str) -> NoReturn:
    raise RpcError(code, message)


def check_domain(name: str) -> str:
    if not DOMAIN_NAME.match(name):
        fail(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"domain {name!r} is not a valid name: use 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
        )
    return name


def check_generation(generation: int) -> int:
    if generation <= 0:
        fail(grpc.StatusCode.INVALID_ARGUMENT, "generation must be >= 1 (it is the pair's fencing token)")
    return generation


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
