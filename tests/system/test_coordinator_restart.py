"""A coordinator killed with SIGKILL and started again: held replies wait
for an epoch only the coordinator can arm (the release rule stays), so the
clients' gap is the outage plus how fast the new coordinator serves and
arms again.  It must add well under a second to the outage."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from cluster import start_agent
from coordinated import agents_alive, free_port, loadgen_in_thread, start_coordinator, wait_for

from colo_plane._proto import colo_pb2
from colo_plane.rpc import duration
from colo_plane.tools import loadgen

pytestmark = pytest.mark.system

OUTAGE = 1.0  # seconds between the kill and the new coordinator's start
ADDED_BOUND = 1.0  # what the restart may add to the outage, on a loaded 2-core box


def test_client_gap_across_a_coordinator_restart(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    db = tmp_path / "colo.db"
    coord = start_coordinator(tmp_path, listen=listen, db=db)
    agents = [start_agent(tmp_path, h, listen, "--label", f"zone={h}") for h in ("host-a", "host-b")]
    wait_for("agents registered", lambda: agents_alive(coord, 2), timeout=15)
    spec = colo_pb2.DomainSpec(
        domain="web",
        checkpoint_interval=duration(5.0),  # held replies wait for divergence-driven epochs, not the timer
        sim=colo_pb2.SimDomainSpec(pages=4096, dirty_rate=2_000, seed=5, divergence_probability=0.05),
    )
    coord.stub.ProtectDomain(
        colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a", wait=True), timeout=60
    )

    ledger = loadgen.Ledger()
    thread, out = loadgen_in_thread(listen, "web", 8.0, clients=4, ledger=ledger)
    new = None
    try:
        time.sleep(2.5)
        before = max(ledger.latencies)
        coord.stop(signal.SIGKILL)
        time.sleep(OUTAGE)
        new = start_coordinator(tmp_path, listen=listen, db=db, name="coordinator-2")
        thread.join(timeout=120)
    finally:
        for a in agents:
            a.stop()
        if new is not None:
            new.stop()
    (report,) = out
    gap = max(ledger.latencies)
    print(f"client gap across a {OUTAGE:.1f} s coordinator outage: {gap:.3f} s (before it: {before:.3f} s)")
    assert report.acknowledged_writes_lost == 0, report
    assert report.reads_of_values_never_written == 0, report
    assert gap <= OUTAGE + ADDED_BOUND, f"clients waited {gap:.2f} s for a {OUTAGE:.1f} s outage"
