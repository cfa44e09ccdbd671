"""A big guest's first boot: `colo protect --wait` of a 2 GiB guest exited 1
after 5.8 s ("first boot failed: DEADLINE_EXCEEDED; the coordinator retries
on its own") and was PROTECTED 20 s later: PrepareSecondary, which makes the
secondary's domain (2 GiB allocated and written), had the 5 s deadline of
any call.  Its deadlines now follow the guest's size, and --wait follows
the coordinator's retries (tests/unit/test_first_boot_deadlines.py shows
both against stand-in agents; here, end to end with real ones)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from coordinated import start_cluster

from colo_plane._proto import colo_pb2
from colo_plane.tools.localcluster import COLO

pytestmark = pytest.mark.system

PAGES = 524_288  # 2 GiB


def test_protect_wait_of_a_2_gib_guest_returns_protected(tmp_path: Path) -> None:
    coord, agents = start_cluster(tmp_path, 2)
    try:
        t0 = time.monotonic()
        done = subprocess.run(
            [
                *COLO,
                "protect",
                "big",
                "--primary",
                "host-a",
                "--pages",
                str(PAGES),
                "--dirty-rate",
                "1000",
                "--wait",
                "--coordinator",
                coord.address,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        took = time.monotonic() - t0
        print(f"\nprotect --wait of a 2 GiB guest: exit {done.returncode} after {took:.1f} s")
        assert done.returncode == 0, done.stderr
        assert "PROTECTED" in done.stdout
        pair = coord.pair("big")
        assert pair.state in (colo_pb2.PAIR_STATE_PROTECTED, colo_pb2.PAIR_STATE_CHECKPOINTING)
        assert pair.checkpoint_counts.first_boot == 1 and pair.checkpoint_counts.failed == 0
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
