"""A coordinator back after an outage is found by every agent within a
second (their reconnect backoff is capped at 1 s: gRPC's default grew to
12-15 s), and its pairs resume without a new first boot, also when an
armed checkpoint (5 s interval: one is nearly always armed) was in flight
at the primary when the coordinator died."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from cluster import start_agent
from coordinated import agents_alive, free_port, sim_spec, start_coordinator, wait_for

from colo_plane._proto import colo_pb2

pytestmark = pytest.mark.system

OUTAGE = 6.0  # long enough for gRPC's default backoff to have grown past 4 s
FOUND_BOUND = 1.5  # new coordinator serving -> every agent registered again


def test_agents_find_a_restarted_coordinator_within_a_second(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    coord = start_coordinator(tmp_path, listen=listen)
    agents = [start_agent(tmp_path, h, listen) for h in ("host-a", "host-b")]
    new = None
    try:
        wait_for("agents", lambda: agents_alive(coord, 2), timeout=15)
        coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(
                spec=sim_spec("vm1", interval=5.0), primary_host="host-a", secondary_host="host-b", wait=True
            ),
            timeout=60,
        )
        time.sleep(1.0)  # an armed epoch waits at the primary
        before = coord.pair("vm1")
        coord.stop(signal.SIGKILL)
        time.sleep(OUTAGE)
        new = start_coordinator(tmp_path, listen=listen, name="coordinator-2")
        t0 = time.monotonic()
        wait_for(
            "both agents re-registered",
            lambda: new is not None and new.log().count("re-registered") >= 2,
            timeout=10,
            every=0.01,
        )
        found = time.monotonic() - t0
        print(f"\nafter a {OUTAGE:.0f} s outage the agents re-registered {found:.2f} s after the restart")
        assert found <= FOUND_BOUND
        wait_for(
            "checkpoints go on",
            lambda: new is not None and new.pair("vm1").epoch > before.epoch + 1,
            timeout=20,
        )
        time.sleep(3.0)  # three failed checkpoints in a row would drop the secondary
        pair = new.pair("vm1")
        assert pair.generation == before.generation and pair.checkpoint_counts.first_boot == 1, pair
        assert pair.failovers == 0 and pair.state in (
            colo_pb2.PAIR_STATE_PROTECTED,
            colo_pb2.PAIR_STATE_CHECKPOINTING,
        )
    finally:
        for agent in agents:
            agent.stop()
        if new is not None:
            new.stop()
        coord.stop()
