"""Only the coordinator -> primary direction cut: the primary's heartbeats
still arrive, but no command reaches it, so it can neither checkpoint nor
release held output.  That is a primary failure: its pairs fail over, it
takes no role until commands reach it again, and it stands down when the
coordinator's answers tell it that it was superseded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cluster import start_agent
from coordinated import agents_alive, free_port, loadgen_in_thread, start_coordinator, wait_for
from relay import OneWayRelay

from colo_plane._proto import colo_pb2
from colo_plane.rpc import duration
from colo_plane.tools import loadgen

pytestmark = pytest.mark.system

CUT = 5.0  # seconds the coordinator -> primary direction is cut, as the checker did (4-6 s)
DETECT_BOUND = 3.0  # cut -> failover started; keepalive (0.5 + 0.5 s) + probe (0.25 s) + slack for a busy box


def test_one_way_cut_to_the_primary_fails_over(tmp_path: Path) -> None:
    coord = start_coordinator(tmp_path)
    port = free_port()
    relay = OneWayRelay(("127.0.0.1", port))
    agents = [
        start_agent(
            tmp_path,
            "host-a",
            coord.address,
            "--listen",
            f"127.0.0.1:{port}",
            "--advertise-grpc",
            relay.address,
        ),
        start_agent(tmp_path, "host-b", coord.address),
        start_agent(tmp_path, "host-c", coord.address),
    ]
    try:
        wait_for("agents registered", lambda: agents_alive(coord, 3), timeout=15)
        spec = colo_pb2.DomainSpec(
            domain="web",
            checkpoint_interval=duration(1.0),
            sim=colo_pb2.SimDomainSpec(pages=4096, dirty_rate=2_000, seed=5, divergence_probability=0.05),
        )
        req = colo_pb2.ProtectDomainRequest(
            spec=spec, primary_host="host-a", secondary_host="host-b", wait=True
        )
        before = coord.stub.ProtectDomain(req, timeout=60).pair

        ledger = loadgen.Ledger()
        thread, out = loadgen_in_thread(coord.address, "web", 2.0 + CUT + 3.0, clients=4, ledger=ledger)
        time.sleep(2.0)
        ops_before = ledger.ops
        relay.cut.set()
        cut_at = time.monotonic()
        print(f"cut at {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}")
        moved = wait_for(
            "failover off the cut primary",
            lambda: (p := coord.pair("web")).primary_host == "host-b" and p,
            timeout=CUT,
        )
        detected = time.monotonic() - cut_at
        # Re-protected meanwhile, and never onto the host commands cannot reach.
        again = wait_for(
            "re-protected", lambda: (p := coord.pair("web")).state == colo_pb2.PAIR_STATE_PROTECTED and p
        )
        assert again.secondary_host == "host-c"
        time.sleep(max(0.0, CUT - (time.monotonic() - cut_at)))
        ops_in_cut = ledger.ops - ops_before
        relay.cut.clear()
        thread.join(timeout=120)
        (report,) = out
        print(f"cut -> failover started: {detected:.2f} s; ops during the {CUT:.0f} s cut: {ops_in_cut}")
        assert detected <= DETECT_BOUND, f"the one-way cut was noticed after {detected:.2f} s"
        assert moved.generation > before.generation
        assert report.acknowledged_writes_lost == 0, report
        assert report.reads_of_values_never_written == 0, report
        assert report.reconnects >= 1  # clients left the stood-down primary for the new one
        assert coord.metric("colo_agent_command_path_lost_total") == 1
        # Commands reach host-a again: it may take roles once more.
        wait_for(
            "host-a reachable and alive again",
            lambda: any(
                a.host_id == "host-a" and a.alive
                for a in coord.stub.ListAgents(colo_pb2.ListAgentsRequest(), timeout=5).agents
            ),
        )
    finally:
        for a in agents:
            a.stop()
        coord.stop()
        relay.close()
