"""The benches' raw TCP baseline (native/bench.c): the same bytes as the stream, moved from a plain buffer."""

from __future__ import annotations

import socket

# The one use of colo_plane.native's private layer outside the package: the
# baseline's C is bench-only, no part of the product, so it stays out of
# colo_plane.native's public face.
from colo_plane.native import _args, _ffi, errors

__all__ = ["RawBuffer", "raw_recv", "raw_send"]

_FILL_SEED = 0x9E3779B97F4A7C15


class RawBuffer:
    """A native buffer for the raw TCP baseline of the benches, filled with
    distinct data: every page is real memory, as guest pages are, and page
    faults are not timed."""

    __slots__ = ("_buf", "size")

    def __init__(self, size: int) -> None:
        self.size = _args.u64("size", size)
        self._buf = _ffi.ffi.new("uint8_t[]", size)
        _ffi.lib.colo_raw_fill(self._buf, size, _FILL_SEED)


def raw_send(sock: socket.socket, buf: RawBuffer, total: int, chunk: int) -> None:
    """Send total bytes in chunk-sized writes, walking through buf."""
    total, chunk = _args.u64("total", total), _args.u64("chunk", chunk)
    errors._check(_ffi.lib.colo_raw_send(sock.fileno(), buf._buf, buf.size, total, chunk))


def raw_recv(sock: socket.socket, buf: RawBuffer, total: int, chunk: int) -> None:
    """Receive total bytes in chunk-sized reads, walking through buf."""
    total, chunk = _args.u64("total", total), _args.u64("chunk", chunk)
    errors._check(_ffi.lib.colo_raw_recv(sock.fileno(), buf._buf, buf.size, total, chunk))
