"""`colo bench netproxy`: the NIC path against a straight veth, same run.

The namespace lab (colo_plane.tools.netlab) with its key-value server in both
guests.  Baseline: the uplink and the primary guest's veth bridged, no
proxy.  Subject: the same veths through the NIC proxy pair at 0 %
divergence (every reply compared against the secondary's and released).
Each round runs both, alternating which goes first (harness.interleave):
a bulk stream (``BULK n``, throughput) and request/response (``GET``,
latency of each).  Figures: the median of per-round bulk ratios, and the
added p99 latency of the pooled samples.  Needs root and `ip netns`.
"""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from colo_plane.native.netproxy import NetProxy, NetProxyConfig, NetRole, open_port
from colo_plane.tools.bench import harness
from colo_plane.tools.netlab import netns

PORT = 7000
ROUNDS = 5
BULK_MB = 64
REQUESTS = 2000
GOAL_BULK = 0.8
GOAL_ADDED_P99_US = 100.0


@dataclasses.dataclass(frozen=True)
class Sample:
    bulk_mb_s: float
    latencies_us: list[float]
    checkpoints: int = 0


class Checkpointer:
    """The test checkpoint: each divergence answered by a checkpoint that
    covers everything so far (what an armed checkpoint does; at 0 %
    divergence it should never run, and the bench reports how often it did)."""

    def __init__(self, proxy: NetProxy) -> None:
        self.proxy = proxy
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self.proxy.event_fd
        while not self._stop.is_set():
            if select.select([fd], [], [], 0.1)[0]:
                os.read(fd, 8)
                self.count += 1
                self.proxy.checkpoint_done(self.count, self.proxy.last_seq)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.count


STALL_SECONDS = 30.0  # no byte for this long: the run fails, saying where it stood


def _recv_exactly(c: socket.socket, total: int, buf: bytearray, what: Callable[[], str]) -> None:
    view, got = memoryview(buf), 0
    while got < total:
        try:
            n = c.recv_into(view[: min(len(buf), total - got)])
        except TimeoutError:
            raise RuntimeError(f"the bulk stream stalled at {got} of {total} bytes: {what()}") from None
        if n == 0:
            raise RuntimeError(f"the server closed the bulk stream at {got} of {total} bytes")
        got += n


def _measure(lab: netns.Lab, bulk_mb: int, requests: int, what: Callable[[], str]) -> Sample:
    total = bulk_mb << 20
    buf = bytearray(1 << 20)
    with lab.connect(PORT, timeout=STALL_SECONDS) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        c.sendall(f"BULK {total}\n".encode())
        _recv_exactly(c, total, buf, what)
        bulk = bulk_mb / (time.perf_counter() - t0)
        f = c.makefile("rb")
        lat: list[float] = []
        for i in range(requests):
            t = time.perf_counter_ns()
            c.sendall(f"GET k{i % 8}\n".encode())
            if not f.readline():
                raise RuntimeError("the server closed the connection")
            lat.append((time.perf_counter_ns() - t) / 1000)
    return Sample(bulk, lat)


def _through_bridge(lab: netns.Lab, bulk_mb: int, requests: int) -> Sample:
    lab.bridge(True)
    try:
        return _measure(lab, bulk_mb, requests, lambda: "straight through the bridge")
    finally:
        lab.bridge(False)


def _through_proxy(lab: netns.Lab, bulk_mb: int, requests: int) -> Sample:
    p = NetProxy(NetProxyConfig(NetRole.PRIMARY), open_port("pg", lab.host), open_port("up0", lab.host))
    s = NetProxy(NetProxyConfig(NetRole.SECONDARY, keep_offsets=True), open_port("sg", lab.host))
    ckpt: Checkpointer | None = None
    try:
        a, b = socket.socketpair()
        p.attach(a)
        s.attach(b)
        ckpt = Checkpointer(p)
        sample = _measure(lab, bulk_mb, requests, lambda: f"primary {p.stats()}; secondary {s.stats()}")
        return dataclasses.replace(sample, checkpoints=ckpt.stop())
    finally:
        if ckpt is not None:
            ckpt.stop()
        p.close()
        s.close()


@dataclasses.dataclass(frozen=True)
class Results:
    rounds: list[harness.Round[Sample, Sample]]
    bulk_ratio: harness.Spread
    base_tail: harness.Tail
    proxy_tail: harness.Tail
    bulk_verdict: harness.Verdict
    p99_verdict: harness.Verdict
    noise: harness.Noise

    @property
    def added_p99_us(self) -> float:
        return (self.proxy_tail.p99 or self.proxy_tail.max) - (self.base_tail.p99 or self.base_tail.max)


def run(*, rounds: int = ROUNDS, bulk_mb: int = BULK_MB, requests: int = REQUESTS) -> Results:
    if not netns.available():
        raise RuntimeError("colo bench netproxy needs root and `ip netns`")
    with netns.lab() as lab:
        lab.start_server(lab.primary, PORT)
        lab.start_server(lab.secondary, PORT)
        done = harness.interleave(
            rounds,
            lambda: _through_bridge(lab, bulk_mb, requests),
            lambda: _through_proxy(lab, bulk_mb, requests),
        )
    ratios = [r.subject.bulk_mb_s / r.baseline.bulk_mb_s for r in done]
    spread = harness.Spread.of(ratios)
    base = [x for r in done for x in r.baseline.latencies_us]
    prox = [x for r in done for x in r.subject.latencies_us]
    base_tail, proxy_tail = harness.Tail.of(base), harness.Tail.of(prox)
    added = [p - b for p, b in zip(sorted(prox), sorted(base), strict=False)]
    bulk_v = harness.judge(
        spread.median, GOAL_BULK, at_least=True, interval=(spread.median_lo, spread.median_hi)
    )
    p99_v = harness.judge_tail("p99", added, GOAL_ADDED_P99_US)
    noise = harness.Noise.of("straight veth bulk", [r.baseline.bulk_mb_s for r in done])
    return Results(done, spread, base_tail, proxy_tail, bulk_v, p99_v, noise)


def render(res: Results) -> str:
    base_bulk = harness.Spread.of([r.baseline.bulk_mb_s for r in res.rounds])
    prox_bulk = harness.Spread.of([r.subject.bulk_mb_s for r in res.rounds])
    lines = [
        f"colo bench netproxy: {len(res.rounds)} rounds, each straight veth then proxy (order alternating); "
        "2 cores shared by both guests, both agents and the client",
        f"  bulk: straight {base_bulk.median:.0f} MB/s, proxy {prox_bulk.median:.0f} MB/s, "
        f"ratio {res.bulk_ratio.median:.2f}x (IQR {res.bulk_ratio.iqr()}), goal >= {GOAL_BULK}x: "
        f"{res.bulk_verdict.word()}",
        f"  request/response straight: {res.base_tail.text('us', '.0f')}",
        f"  request/response proxy:    {res.proxy_tail.text('us', '.0f')}",
        f"  added p99: {res.added_p99_us:.0f} us, goal <= {GOAL_ADDED_P99_US:.0f} us: "
        f"{res.p99_verdict.word()}",
        f"  checkpoints the proxy asked for at 0 % divergence: {[r.subject.checkpoints for r in res.rounds]}",
        f"  {res.noise.text()}",
    ]
    lines += harness.render_warnings(harness.noise_warning("netproxy", res.noise))
    return "\n".join(lines)


def as_json(res: Results) -> dict[str, Any]:
    return {
        "rounds": len(res.rounds),
        "cores": "2, shared",
        "bulk_mb_s": {
            "straight": [r.baseline.bulk_mb_s for r in res.rounds],
            "proxy": [r.subject.bulk_mb_s for r in res.rounds],
        },
        "bulk_ratio": res.bulk_ratio.median,
        "bulk_ratio_iqr": [res.bulk_ratio.q1, res.bulk_ratio.q3],
        "bulk_goal": GOAL_BULK,
        "bulk_verdict": res.bulk_verdict.word(),
        "latency_us": {
            "straight": {"p50": res.base_tail.p50, "p99": res.base_tail.p99},
            "proxy": {"p50": res.proxy_tail.p50, "p99": res.proxy_tail.p99},
        },
        "added_p99_us": res.added_p99_us,
        "added_p99_goal_us": GOAL_ADDED_P99_US,
        "added_p99_verdict": res.p99_verdict.word(),
        "checkpoints": [r.subject.checkpoints for r in res.rounds],
        "noise_cv": res.noise.cv,
    }
