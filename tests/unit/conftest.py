"""Shared fixtures for the unit tests: sim domains that are always closed,
connected socket pairs (socketpair and loopback TCP), and a sender thread."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netkit import Sender, guard, tcp_pair

from colo_plane.native import Domain


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
