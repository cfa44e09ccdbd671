"""Proxy and Mirror: the COLO proxy's data path (native/proxy.c, native/mirror.c), each on a C thread."""

from __future__ import annotations

import socket
from typing import Any, Final

from colo_plane.native._args import u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.abi import (
    PROXY_OUTPUT_MAX,
    PROXY_OUTPUT_MIN,
    PROXY_REASONS,
    MirrorResult,
    ProxyEvent,
    ProxyEventKind,
    ProxyStats,
)
from colo_plane.native.arm import Arm
from colo_plane.native.domain import Domain
from colo_plane.native.errors import _check

__all__ = ["MAX_POLL_US", "Mirror", "Proxy"]


MAX_POLL_US: Final = 10_000  # the longest busy-poll window a proxy or mirror thread may take


def _poll_us(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_POLL_US:
        raise ValueError(f"poll window must be 0..{MAX_POLL_US} microseconds, got {value!r}")
    return value


class Proxy:
    """The primary's COLO proxy (native/proxy.c): a C thread serves the
    clients of listener with dom's guest service and compares replies with
    the secondary's.  It takes the sockets over; close() stops it.  A client
    whose unsent output reaches output_max bytes is read no further until it
    has read half of it (docs/proxy.md).  Given an arm, it reports each held
    reply into it (an armed checkpoint starts there).  A domain whose backend
    has no guest network hook is refused: BackendError(UNSUPPORTED)."""

    __slots__ = ("_arm", "_dom", "_events", "_ptr")

    def __init__(
        self,
        dom: Domain,
        listener: socket.socket,
        reply_timeout: float,
        *,
        poll_us: int = 0,
        output_max: int = PROXY_OUTPUT_MAX,
        arm: Arm | None = None,
    ) -> None:
        ms = round(reply_timeout * 1000)
        if not 0 < ms < 2**32:
            raise ValueError(f"reply timeout must be positive, got {reply_timeout}")
        if (
            not isinstance(output_max, int)
            or isinstance(output_max, bool)
            or not (PROXY_OUTPUT_MIN <= output_max < 2**32)
        ):
            raise ValueError(f"output bound must be {PROXY_OUTPUT_MIN} B to under 4 GiB, got {output_max!r}")
        out = ffi.new("colo_proxy **")
        fd = listener.fileno()
        arm_ptr = arm._p() if arm is not None else ffi.NULL
        _check(lib.colo_proxy_new(dom._p(), fd, ms, _poll_us(poll_us), output_max, arm_ptr, out))
        listener.detach()  # the proxy owns it now
        self._dom = dom  # the guest must outlive the thread serving it
        self._arm = arm  # and the arm the thread reports to
        self._ptr: Any = out[0]
        self._events = ffi.new("struct colo_proxy_event[]", 256)

    def _p(self) -> Any:
        if self._ptr is None:
            raise ValueError("proxy is closed")
        return self._ptr

    @property
    def event_fd(self) -> int:
        """Readable when events are queued."""
        return int(lib.colo_proxy_event_fd(self._p()))

    def attach(self, link: socket.socket) -> None:
        """A secondary in sync: compare its replies from now on."""
        _check(lib.colo_proxy_attach(self._p(), link.fileno()))
        link.detach()

    def detach(self) -> None:
        lib.colo_proxy_detach(self._p())

    def unprotect(self) -> int:
        """Replies go straight out; returns how many held ones were released."""
        n = ffi.new("uint64_t *")
        lib.colo_proxy_unprotect(self._p(), n)
        return int(n[0])

    def checkpoint_done(self, epoch: int, last_seq: int) -> None:
        lib.colo_proxy_checkpoint_done(self._p(), u64("epoch", epoch), u64("last_seq", last_seq))

    def events(self) -> list[ProxyEvent]:
        out: list[ProxyEvent] = []
        n = ffi.new("uint64_t *")
        while True:
            lib.colo_proxy_events(self._p(), self._events, 256, n)
            for i in range(int(n[0])):
                ev = self._events[i]
                out.append(
                    ProxyEvent(
                        ProxyEventKind(ev.kind),
                        PROXY_REASONS.get(int(ev.reason), ""),
                        int(ev.seq),
                        int(ev.epoch),
                        int(ev.t_ns),
                        int(ev.code),
                        ffi.string(ev.detail).decode(errors="replace"),
                    )
                )
            if n[0] < 256:
                return out

    def stats(self) -> ProxyStats:
        st = ffi.new("struct colo_proxy_stats *")
        lib.colo_proxy_stats(self._p(), st)
        return ProxyStats(*(int(getattr(st, f)) for f in ProxyStats.__dataclass_fields__))

    def close(self) -> None:
        """Stops the thread, closes every client and the link."""
        if self._ptr is not None:
            lib.colo_proxy_free(self._ptr)
            self._ptr = None


class Mirror:
    """The secondary's end of the proxy (native/mirror.c): a C thread runs
    the primary's requests on dom.  Takes the link over; close() stops it.
    Refused as Proxy is on a domain without a guest network hook."""

    __slots__ = ("_dom", "_ptr")

    def __init__(self, dom: Domain, link: socket.socket, *, poll_us: int = 0) -> None:
        out = ffi.new("colo_mirror **")
        _check(lib.colo_mirror_new(dom._p(), link.fileno(), _poll_us(poll_us), out))
        link.detach()
        self._dom = dom
        self._ptr: Any = out[0]

    @property
    def done_fd(self) -> int:
        """Readable once the link ended."""
        if self._ptr is None:
            raise ValueError("mirror is closed")
        return int(lib.colo_mirror_done_fd(self._ptr))

    def result(self) -> MirrorResult:
        if self._ptr is None:
            raise ValueError("mirror is closed")
        finished = ffi.new("int *")
        served, skipped = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        detail = ffi.new("char[]", 256)
        code = lib.colo_mirror_result(self._ptr, finished, served, skipped, detail, 256)
        return MirrorResult(
            bool(finished[0]),
            int(code),
            int(served[0]),
            int(skipped[0]),
            ffi.string(detail).decode(errors="replace"),
        )

    def close(self) -> None:
        if self._ptr is not None:
            lib.colo_mirror_free(self._ptr)
            self._ptr = None
