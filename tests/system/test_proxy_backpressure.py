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
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import AgentProcess, StartAgent, protect, sim_spec

from colo_plane import addresses, promtext
from colo_plane.tools import loadgen

pytestmark = pytest.mark.system

CLIENTS = 4  # the well-behaved ones, one request at a time each
# Slices without and with the pipelining client, alternating (without first
# and last), each "with" compared with the two around it.  On a shared
# 2-core machine one second's throughput can be half the next one's: many
# short slices, and the median of their ratios.
PIPELINED_SLICES = 12
SLICE_SECONDS = 0.6
SETTLE_SECONDS = 3.0  # at most, for the pipeliner to be blocked before a slice
MAX_GROWTH_MB = 40.0
MIN_RATIO = 0.8
BIG = "x" * 190  # GET big: a 197-byte reply to an 8-byte request

# Runs in a process of its own (its CPU does not share the test's GIL).  On
# "open" it connects and writes GETs as fast as the proxy takes them, never
# reading; it says "blocked" once the socket took nothing for 0.2 s.  On
# "close" it closes that connection and says how many bytes it sent.
# Small socket buffers: the kernel holds a little of what it does not read
# (on loopback they grow to megabytes), so it is blocked in milliseconds.
PIPELINER = r"""
import select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
batch = b"GET big\n" * 8192
s, sent, last, blocked = None, 0, 0.0, False
while True:
    readable, writable, _ = select.select([sys.stdin], [s] if s else [], [], 0.05)
    if readable:
        command = sys.stdin.readline().strip()
        if command == "open":
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            s.connect((host, port))
            s.setblocking(False)
            sent, last, blocked = 0, time.monotonic(), False
        elif command == "close":
            s.close()
            s = None
            print(sent, flush=True)
        else:
            break
        continue
    if writable:
        try:
            sent += s.send(batch)
            last = time.monotonic()
        except BlockingIOError:
            pass
    if s and not blocked and time.monotonic() - last > 0.2:
        blocked = True
        print("blocked", flush=True)
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


class Clients:
    """CLIENTS loadgen connections in a thread of their own, each SET then
    GET of its own keys, one request at a time, until close(); ops counts
    their replies so far."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ops = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the test thread reports it
            self.failure = exc

    async def _main(self) -> None:
        await asyncio.gather(*(self._one(i) for i in range(CLIENTS)))

    async def _one(self, index: int) -> None:
        conn = loadgen.Connection(loadgen.resolver(None, None, self.address), loadgen.Ledger())
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                key = f"bp{index}-{n % 64}"  # a few keys again and again: the store does not fill
                assert await conn.call(f"SET {key} {n}") == b"OK\n"
                assert await conn.call(f"GET {key}") == f"VALUE {n}\n".encode()
                self.ops += 2
        finally:
            conn.close()

    def rate(self, seconds: float) -> float:
        """Their ops per second over the next seconds."""
        start, t0 = self.ops, time.monotonic()
        time.sleep(seconds)
        return (self.ops - start) / (time.monotonic() - t0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.failure is not None:
            raise self.failure


class Pipeliner:
    def __init__(self, address: str) -> None:
        host, port = addresses.parse(address)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PIPELINER, host, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self._lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.stdout:
            with self._cond:
                self._lines.append(line.strip())
                self._cond.notify_all()

    def _next(self, timeout: float) -> str | None:
        with self._cond:
            self._cond.wait_for(lambda: self._lines, timeout)
            return self._lines.pop(0) if self._lines else None

    def _command(self, line: str) -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()

    def open(self) -> None:
        """A new connection that pipelines and never reads; returns once it
        is blocked, or after SETTLE_SECONDS of a proxy that reads on and on."""
        self._command("open")
        assert self._next(SETTLE_SECONDS) in ("blocked", None)

    def close_connection(self) -> int:
        """Closes it; the bytes it got the proxy to take."""
        self._command("close")
        while (line := self._next(10)) == "blocked":
            pass  # a late one: it blocked after open() stopped waiting
        assert line is not None
        return int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._command("quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pipeliner_factory() -> Iterator[list[Pipeliner]]:
    started: list[Pipeliner] = []
    yield started
    for p in started:
        p.stop()


def call(address: str, line: str) -> bytes:
    """One request over a connection of its own."""

    async def run() -> bytes:
        conn = loadgen.Connection(loadgen.resolver(None, None, address), loadgen.Ledger())
        try:
            return await conn.call(line)
        finally:
            conn.close()

    return asyncio.run(run())


def metric(agent: AgentProcess, name: str) -> float:
    return promtext.total([promtext.scrape(agent.info["metrics"], timeout=5)], name)


def test_a_client_that_never_reads_is_paused_alone(
    agents: StartAgent, pipeliner_factory: list[Pipeliner]
) -> None:
    a, b = agents("host-a"), agents("host-b")
    boot = protect(a, b, sim_spec("vm1", pages=2048, rate=0, divergence=0.0, verify=False))
    address = boot.service_address
    assert call(address, f"SET big {BIG}") == b"OK\n"
    pipeliner = Pipeliner(address)
    pipeliner_factory.append(pipeliner)
    clients = Clients(address)
    without: list[float] = []
    pipelined: list[float] = []
    sent: list[int] = []
    try:
        clients.rate(0.5)  # warm-up: connections, caches, the secondary's path
        rss_before = rss_mb(a.proc.pid)
        watch = RssWatch(a.proc.pid)
        try:
            without.append(clients.rate(SLICE_SECONDS))
            for _ in range(PIPELINED_SLICES):
                pipeliner.open()
                pipelined.append(clients.rate(SLICE_SECONDS))
                sent.append(pipeliner.close_connection())
                without.append(clients.rate(SLICE_SECONDS))
        finally:
            watch.close()
    finally:
        clients.close()
    growth = watch.peak - rss_before
    # Each slice with the pipeliner against the mean of the two around it: a
    # drift of the machine's load favours neither.
    ratios = [p / ((without[i] + without[i + 1]) / 2) for i, p in enumerate(pipelined)]
    figures = (
        f"primary RSS {rss_before:.0f} MB -> peak {watch.peak:.0f} MB (+{growth:.0f} MB); "
        f"others' ops/s without {[round(x) for x in without]}, with {[round(x) for x in pipelined]}; "
        f"ratios {[round(r, 2) for r in sorted(ratios)]}, median {statistics.median(ratios):.2f}; "
        f"pipeliner sent {[n // 1024 for n in sent]} KiB"
    )
    print(figures)
    assert growth < MAX_GROWTH_MB, figures
    assert statistics.median(ratios) >= MIN_RATIO, figures
    # Each pipelining connection was paused at least once; the gauge is back
    # to 0 once it left (the agent refreshes its metrics twice a second).
    deadline = time.monotonic() + 5
    while metric(a, "colo_proxy_clients_paused") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(a, "colo_proxy_backpressure_total") >= PIPELINED_SLICES, figures
    assert metric(a, "colo_proxy_clients_paused") == 0
    # Still served, and its reply is the one it asked for.
    assert call(address, "GET big") == f"VALUE {BIG}\n".encode()
