"""The rewriter: different ISNs on every connection, no reset, no stall."""

from __future__ import annotations

import time

from tests.netproxy.conftest import PORT, MakePair

MB10 = 10 * 1024 * 1024


def test_ten_megabytes_and_a_thousand_short_connections(make_pair: MakePair) -> None:
    pair = make_pair(compare_timeout=3.0)
    with pair.lab.connect(PORT, timeout=30.0) as c:
        c.sendall(f"BULK {MB10}\n".encode())
        got, t0 = 0, time.monotonic()
        while got < MB10:
            chunk = c.recv(1 << 20)
            assert chunk, "closed early"
            got += len(chunk)
        bulk_s = time.monotonic() - t0
    for i in range(1000):
        with pair.lab.connect(PORT) as c:
            c.sendall(f"SET s{i} {i}\n".encode())
            assert c.recv(100) == b"OK 00000000\n"
    p, s = pair.primary.stats(), pair.secondary.stats()
    assert p.divergences == 0, p
    assert s.rewritten > 1000
    time.sleep(0.5)
    for ns in (pair.lab.secondary, pair.lab.primary):
        tcp = pair.lab.tcp_stats(ns)
        assert tcp["EstabResets"] == 0 and tcp["OutRsts"] == 0, (ns, tcp)
    assert pair.lab.tcp_stats(pair.lab.secondary)["PassiveOpens"] == 1001
    print(f"10 MB in {bulk_s:.2f} s")
