"""A bench stopped by SIGTERM stops the local cluster it started, also in
the middle of its load: nothing is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def processes(read: str) -> Iterator[tuple[int, bytes]]:
    """(pid, its /proc/PID/READ file) of every process that still has one."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / read).read_bytes()
            except OSError:
                continue


def children(pid: int) -> set[int]:
    """Direct children of pid."""
    return {p for p, stat in processes("stat") if int(stat.rsplit(b")", 1)[1].split()[1]) == pid}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def bench_processes(tmp: Path) -> set[int]:
    """Every process this test's bench runs: its cluster's files live in
    TMP/colo-bench-* (TMPDIR is the test's own, so a bench run elsewhere on
    the machine is not counted)."""
    marker = f"{tmp}/colo-bench-".encode()
    return {p for p, cmdline in processes("cmdline") if marker in cmdline and alive(p)}


def test_sigterm_to_a_bench_stops_its_cluster(tmp_path: Path) -> None:
    before = bench_processes(tmp_path)
    bench = subprocess.Popen(
        [sys.executable, "-m", "colo_plane.cli", "bench", "failover", "--trials", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp_path)},
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
        while (bench_processes(tmp_path) - before) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Also an agent the bench started after we looked (a trial restarts its victim).
        assert not (bench_processes(tmp_path) - before), "cluster processes left running"
    finally:
        if bench.poll() is None:
            bench.kill()
        for k in kids | (bench_processes(tmp_path) - before):  # never leave them to the next test
            if alive(k):
                os.kill(k, signal.SIGKILL)
