"""Arm: the armed checkpoint (native/arm.c), the checkpoint side's.  The
agent waits on it; an output comparer (Proxy) given it only reports into it."""

from __future__ import annotations

from typing import Any

from colo_plane.native._args import timeout_ms, u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.abi import PROXY_REASONS, ArmResult, ArmWhy
from colo_plane.native.errors import _check

__all__ = ["Arm"]


class Arm:
    """One domain's armed checkpoint.  Freed when the last reference goes
    (a Proxy given it keeps one, so it outlives the comparer reporting to it).
    Until a comparer reports that it compares, every wait raises Disarmed."""

    __slots__ = ("_ptr",)

    def __init__(self) -> None:
        out = ffi.new("colo_arm **")
        _check(lib.colo_arm_new(out))
        self._ptr: Any = ffi.gc(out[0], lib.colo_arm_free)

    def _p(self) -> Any:
        return self._ptr

    def await_divergence(self, token: int, timeout: float) -> ArmResult:
        """Blocks (GIL released) until an output is held, fire(token) or timeout
        seconds pass; raises Disarmed when the wait ends without a checkpoint."""
        out = ffi.new("struct colo_arm_result *")
        _check(lib.colo_arm_await(self._ptr, u64("token", token), timeout_ms(timeout), out))
        return ArmResult(ArmWhy(out.why), PROXY_REASONS.get(int(out.reason), ""), int(out.seq), int(out.t_ns))

    def fire(self, token: int) -> None:
        """The armed checkpoint of token starts now (a later token is not touched)."""
        lib.colo_arm_fire(self._ptr, u64("token", token))

    def disarm(self, token: int) -> None:
        """The armed checkpoint of token ends without starting, unless it already started."""
        lib.colo_arm_disarm(self._ptr, u64("token", token))
