"""Plain helpers for the unit tests (importable by name; the fixtures that
use them live in conftest.py)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

# A kernel-level send/receive timeout keeps a buggy test from hanging for
# ever while the descriptors stay blocking (the C side must cope with both).
SOCKET_GUARD_SECONDS = 10


def guard(sock: socket.socket, seconds: float = SOCKET_GUARD_SECONDS) -> socket.socket:
    """Bound every blocking read/write of sock by seconds (SO_RCVTIMEO/SO_SNDTIMEO)."""
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    return sock


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client, server side)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        client = socket.create_connection(lsock.getsockname())
        server, _ = lsock.accept()
    client.setblocking(True)
    server.setblocking(True)
    return client, server


class Sender:
    """Runs fn in a thread (sends block); join() re-raises what it raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 20.0, *, check: bool = True) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "sender thread still running"
        if check and self.error is not None:
            raise self.error
