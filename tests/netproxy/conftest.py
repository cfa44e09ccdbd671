"""The NIC path's tests: two namespaces as the two guests (colo_plane.tools.netlab)."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from colo_plane.native.netproxy import NetProxy, NetProxyConfig, NetRole, open_port
from colo_plane.tools.netlab import netns

PORT = 7000
_tags = itertools.count()

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and ip netns")


@dataclass
class Pair:
    lab: netns.Lab
    primary: NetProxy
    secondary: NetProxy


MakePair = Callable[..., Pair]


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    if not netns.available():
        pytest.skip("needs root and ip netns")
    with netns.lab(f"{os.getpid() % 10000}x{next(_tags)}") as lb:
        yield lb


@pytest.fixture
def make_pair(lab: netns.Lab) -> Iterator[MakePair]:
    made: list[NetProxy] = []

    def make(
        *,
        primary_random: float = 0.0,
        secondary_random: float = 0.0,
        secondary_server: bool = True,
        compare_timeout: float = 0.5,
        max_conns: int = 65536,
    ) -> Pair:
        lab.start_server(lab.primary, PORT, primary_random)
        if secondary_server:
            lab.start_server(lab.secondary, PORT, secondary_random)
        p = NetProxy(
            NetProxyConfig(NetRole.PRIMARY, compare_timeout=compare_timeout, max_conns=max_conns),
            open_port("pg", lab.host),
            open_port("up0", lab.host),
        )
        made.append(p)
        # No checkpoint copies a namespace's TCP state: the offsets must stay.
        s = NetProxy(
            NetProxyConfig(NetRole.SECONDARY, max_conns=max_conns, keep_offsets=True),
            open_port("sg", lab.host),
        )
        made.append(s)
        a, b = socket.socketpair()
        p.attach(a)
        s.attach(b)
        return Pair(lab, p, s)

    yield make
    for np in made:
        np.close()
