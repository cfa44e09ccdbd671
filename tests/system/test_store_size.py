"""The guest's key-value store is sized from `colo protect` (--store-slots):
it filled ("ERROR store full" after ~65k writes on the default guest) and
nothing could make it bigger.  A store that does not fit the guest is
refused with a message that says what to change."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from coordinated import start_cluster

from colo_plane import addresses
from colo_plane.tools.localcluster import COLO

pytestmark = pytest.mark.system


def _colo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COLO, *args], capture_output=True, text=True, timeout=120, check=False)


def test_store_slots_sizes_the_guests_store(tmp_path: Path) -> None:
    coord, agents = start_cluster(tmp_path, 2)
    try:
        where = ("--coordinator", coord.address)
        done = _colo(
            "protect", "kv", "--primary", "host-a", "--pages", "256", "--store-slots", "32", "--wait", *where
        )
        assert done.returncode == 0, done.stderr
        host, port = addresses.parse(coord.pair("kv").service_endpoint)
        replies = []
        with socket.create_connection((host, port), timeout=10) as conn, conn.makefile("rwb") as f:
            for i in range(40):
                f.write(f"SET key-{i} value-{i}\n".encode())
                f.flush()
                replies.append(f.readline().strip())
        assert replies.count(b"OK") == 32 and replies[-1] == b"ERROR store full", replies
        refused = _colo(
            "protect", "kv2", "--primary", "host-a", "--pages", "64", "--store-slots", "10000", *where
        )
        assert refused.returncode == 2
        assert "takes 626 pages of the guest's 64" in refused.stderr and "--pages" in refused.stderr
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
