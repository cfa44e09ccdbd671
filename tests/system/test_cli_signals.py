"""A bench stopped by SIGTERM stops the local cluster it started, also in
the middle of its load: nothing is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def children(pid: int) -> set[int]:
    """Direct children of pid, from /proc."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def bench_processes() -> set[int]:
    """Every process a bench's local cluster runs (its files live in /tmp/colo-bench-*)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"/colo-bench-" in cmdline and alive(int(entry.name)):
                out.add(int(entry.name))
    return out


def test_sigterm_to_a_bench_stops_its_cluster() -> None:
    before = bench_processes()
    bench = subprocess.Popen(
        [sys.executable, "-m", "colo_plane.cli", "bench", "failover", "--trials", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while len(kids := children(bench.pid)) < 3:  # a coordinator and agents
            assert time.monotonic() < deadline, "the bench started no cluster"
            time.sleep(0.05)
        time.sleep(3.0)  # into the run: the domain protected, clients under way
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 5
        while (bench_processes() - before) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Also an agent the bench started after we looked (a trial restarts its victim).
        assert not (bench_processes() - before), "cluster processes left running"
    finally:
        if bench.poll() is None:
            bench.kill()
        for k in kids | (bench_processes() - before):  # never leave them to the next test
            if alive(k):
                os.kill(k, signal.SIGKILL)
