"""Shared fixtures for the unit tests: sim domains that are always closed,
connected socket pairs (socketpair and loopback TCP), and a sender thread."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from colo_plane.native import Domain

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


@pytest.fixture(params=["socketpair", "tcp"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(tx, rx): a connected, full-duplex, blocking pair of sockets."""
    a, b = socket.socketpair() if request.param == "socketpair" else tcp_pair()
    guard(a)
    guard(b)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def domains() -> Iterator[Callable[..., Domain]]:
    """Factory of sim domains (Domain.sim keywords); all closed at teardown."""
    opened: list[Domain] = []

    def make(**kw: Any) -> Domain:
        dom = Domain.sim(**kw)
        opened.append(dom)
        return dom

    try:
        yield make
    finally:
        for dom in opened:
            dom.close()


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


@pytest.fixture
def send() -> Iterator[Callable[[Callable[[], object]], Sender]]:
    """send(fn) starts fn in a thread; every sender is joined at teardown."""
    started: list[Sender] = []

    def start(fn: Callable[[], object]) -> Sender:
        s = Sender(fn)
        started.append(s)
        return s

    yield start
    for s in started:
        s.join(check=False)
