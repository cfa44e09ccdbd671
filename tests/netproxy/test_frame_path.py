"""The frame path: ingress to both guests in order, identical output released."""

from __future__ import annotations

import threading
import time

import pytest

from colo_plane.native.errors import BackendError
from colo_plane.native.netproxy import open_port
from colo_plane.tools.netlab import netns
from tests.netproxy.conftest import PORT, MakePair

CLIENTS = 16
ROUNDS = 50


def _client(lab: netns.Lab, n: int, errors: list[str]) -> None:
    try:
        with lab.connect(PORT) as c:
            f = c.makefile("rwb")
            for i in range(ROUNDS):
                f.write(f"SET k{n} {i}\n".encode())
                f.flush()
                assert f.readline() == b"OK 00000000\n"
                f.write(f"GET k{n}\n".encode())
                f.flush()
                assert f.readline() == f"VAL {i} 00000000\n".encode()
    except BaseException as exc:
        errors.append(f"client {n}: {exc!r}")


def test_sixteen_clients_reach_both_guests_in_order(make_pair: MakePair) -> None:
    pair = make_pair()
    errors: list[str] = []
    threads = [threading.Thread(target=_client, args=(pair.lab, n, errors)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    p, s = pair.primary.stats(), pair.secondary.stats()
    assert errors == [], (p, s, pair.lab.tcp_stats(pair.lab.secondary))
    deadline = time.monotonic() + 5.0  # the last frames may still be on the link
    while pair.secondary.stats().ingress < pair.primary.stats().ingress and time.monotonic() < deadline:
        time.sleep(0.05)
    p, s = pair.primary.stats(), pair.secondary.stats()
    # The secondary refuses a forwarded frame out of order by dropping the
    # link: a link that stayed up got every frame in the primary's order.
    assert p.link_lost == 0 and s.link_lost == 0
    assert s.ingress == p.ingress == pair.primary.last_seq
    assert p.divergences == 0
    assert p.equal["tcp"] >= CLIENTS * ROUNDS * 2
    # The last FINs may still wait for the secondary's: they leave once it sends them.
    deadline = time.monotonic() + 5.0
    while pair.primary.stats().held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pair.primary.stats().held == 0
    # Every connection opened on the secondary too, with rewritten numbers, and no reset.
    tcp = pair.lab.tcp_stats(pair.lab.secondary)
    assert tcp["PassiveOpens"] == CLIENTS
    assert tcp["EstabResets"] == 0 and tcp["OutRsts"] == 0
    assert s.rewritten > 0


def test_missing_nic_is_a_clear_error(lab: netns.Lab) -> None:
    with pytest.raises(BackendError, match=r"no network interface vif9\.9"):
        open_port("vif9.9", lab.host)
    with pytest.raises(BackendError, match="network namespace"):
        open_port("pg", "no-such-namespace-here")
