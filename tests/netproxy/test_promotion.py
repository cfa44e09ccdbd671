"""Promotion: the secondary takes the uplink and the clients' connections carry on."""

from __future__ import annotations

from colo_plane.native.netproxy import open_port
from tests.netproxy.conftest import PORT, MakePair


def test_client_connection_survives_promotion(make_pair: MakePair) -> None:
    pair = make_pair()
    with pair.lab.connect(PORT) as c:
        f = c.makefile("rwb")
        for i in range(20):
            f.write(f"SET k {i}\n".encode())
            f.flush()
            assert f.readline() == b"OK 00000000\n"
        assert pair.primary.stats().divergences == 0
        # The primary host is lost: its proxy goes, the secondary takes the uplink.
        pair.primary.close()
        pair.secondary.promote(open_port("up0", pair.lab.host))
        before = pair.secondary.stats().rewritten
        # Same connection, now served by the secondary guest, its numbers still rewritten.
        f.write(b"GET k\n")
        f.flush()
        assert f.readline() == b"VAL 19 00000000\n"
        for i in range(20):
            f.write(f"SET k {i}\n".encode())
            f.flush()
            assert f.readline() == b"OK 00000000\n"
        assert pair.secondary.stats().rewritten > before
    for ns in (pair.lab.secondary, pair.lab.client):
        tcp = pair.lab.tcp_stats(ns)
        assert tcp["EstabResets"] == 0 and tcp["OutRsts"] == 0, (ns, tcp)
