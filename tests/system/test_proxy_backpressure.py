"""One client that pipelines requests and never reads its replies, against a
protected pair of real agents: the primary's memory stays bounded, the other
clients keep their throughput, and the backpressure is counted."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cluster import AgentProcess, StartAgent, protect, sim_spec

from colo_plane import addresses, loadgen, promtext

pytestmark = pytest.mark.system

CLIENTS = 4  # the well-behaved ones, one request at a time each
ROUNDS = 3  # pairs of rounds, with and without the pipelining client, alternating
ROUND_SECONDS = 2.0
MAX_GROWTH_MB = 40.0
MIN_RATIO = 0.8
BIG = "x" * 190  # GET big: a 199-byte reply to an 8-byte request

# Runs in a process of its own (so its CPU does not share the test's GIL):
# connects, says so, then writes GETs as fast as the proxy takes them and
# never reads; stops and prints what it sent when its stdin closes.
PIPELINER = r"""
import select, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
s.setblocking(False)
print("connected", flush=True)
batch, sent = b"GET big\n" * 8192, 0
while True:
    readable, writable, _ = select.select([sys.stdin], [s], [], 0.05)
    if readable:
        break
    if writable:
        try:
            sent += s.send(batch)
        except BlockingIOError:
            pass
print(sent, flush=True)
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssWatch:
    """The highest RSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


async def _ops_per_second(address: str, seconds: float) -> float:
    """CLIENTS loadgen connections, each SET then GET of its own keys, one
    request at a time, for seconds: the ops per second they got."""
    resolve = loadgen.resolver(None, None, address)
    ledger = loadgen.Ledger()
    start = time.monotonic()
    until = start + seconds

    async def one(index: int) -> None:
        conn = loadgen.Connection(resolve, ledger)
        n = 0
        try:
            while time.monotonic() < until:
                n += 1
                key = f"bp{index}-{n % 64}"  # a few keys again and again: the store does not fill
                assert await conn.call(f"SET {key} {n}") == b"OK\n"
                assert await conn.call(f"GET {key}") == f"VALUE {n}\n".encode()
                ledger.ops += 2
        finally:
            conn.close()

    await asyncio.gather(*(one(i) for i in range(CLIENTS)))
    return ledger.ops / (time.monotonic() - start)


def call(address: str, line: str) -> bytes:
    """One request over a connection of its own."""

    async def run() -> bytes:
        conn = loadgen.Connection(loadgen.resolver(None, None, address), loadgen.Ledger())
        try:
            return await conn.call(line)
        finally:
            conn.close()

    return asyncio.run(run())


def ops_per_second(address: str, seconds: float) -> float:
    return asyncio.run(_ops_per_second(address, seconds))


def pipelined_round(address: str, seconds: float) -> tuple[float, int]:
    """A round with the pipelining client on: the others' ops/s, and the
    bytes the pipeliner got the proxy to take."""
    host, port = addresses.parse(address)
    pipeliner = subprocess.Popen(
        [sys.executable, "-c", PIPELINER, host, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert pipeliner.stdout is not None and pipeliner.stdin is not None
        assert pipeliner.stdout.readline() == b"connected\n"
        time.sleep(0.2)  # it is well under way before the others are measured
        ops = ops_per_second(address, seconds)
        pipeliner.stdin.close()
        sent = int(pipeliner.stdout.readline())
        pipeliner.wait(10)
        return ops, sent
    finally:
        if pipeliner.poll() is None:
            pipeliner.kill()
            pipeliner.wait()


def metric(agent: AgentProcess, name: str) -> float:
    return promtext.total([promtext.scrape(agent.info["metrics"], timeout=5)], name)


def test_a_client_that_never_reads_is_paused_alone(agents: StartAgent) -> None:
    a, b = agents("host-a"), agents("host-b")
    boot = protect(a, b, sim_spec("vm1", pages=2048, rate=0, divergence=0.0, verify=False))
    address = boot.service_address
    assert call(address, f"SET big {BIG}") == b"OK\n"
    ops_per_second(address, 0.5)  # warm-up: connections, caches, the secondary's path
    rss_before = rss_mb(a.proc.pid)
    watch = RssWatch(a.proc.pid)
    baseline: list[float] = []
    pipelined: list[float] = []
    sent: list[int] = []
    try:
        for i in range(ROUNDS):
            # Alternate which goes first, so a drift of the machine's load favours neither.
            for with_pipeliner in (i % 2 == 0, i % 2 == 1):
                if with_pipeliner:
                    ops, n = pipelined_round(address, ROUND_SECONDS)
                    pipelined.append(ops)
                    sent.append(n)
                else:
                    baseline.append(ops_per_second(address, ROUND_SECONDS))
    finally:
        watch.close()
    growth = watch.peak - rss_before
    ratios = [p / q for p, q in zip(pipelined, baseline, strict=True)]
    figures = (
        f"primary RSS {rss_before:.0f} MB -> peak {watch.peak:.0f} MB (+{growth:.0f} MB); "
        f"others' ops/s without {[round(x) for x in baseline]}, with {[round(x) for x in pipelined]}, "
        f"median ratio {statistics.median(ratios):.2f}; pipeliner sent {[n // 1024 for n in sent]} KiB"
    )
    print(figures)
    assert growth < MAX_GROWTH_MB, figures
    assert statistics.median(ratios) >= MIN_RATIO, figures
    # Each pipeliner was paused at least once; the gauges come back to 0
    # once it left (the agent refreshes its metrics twice a second).
    deadline = time.monotonic() + 5
    while metric(a, "colo_proxy_clients_paused") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(a, "colo_proxy_backpressure_total") >= ROUNDS, figures
    assert metric(a, "colo_proxy_clients_paused") == 0
    # Still served, and its reply is the one it asked for.
    assert call(address, "GET big") == f"VALUE {BIG}\n".encode()
