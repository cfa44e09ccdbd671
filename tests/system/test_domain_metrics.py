"""The per-domain view: which VM pauses long, diverges, sends what, failed
over, and what state its pair is in (docs/operations.md, "Cardinality").
A domain's series on an agent go when the agent lets the domain go."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from coordinated import sim_spec, start_cluster, wait_for

from colo_plane import promtext
from colo_plane._proto import colo_pb2

pytestmark = pytest.mark.system


def _has(text: str, series: str) -> bool:
    return re.search(rf"^{re.escape(series)} ", text, re.MULTILINE) is not None


def test_pause_bytes_divergences_failovers_and_state_carry_the_domain(tmp_path: Path) -> None:
    coord, agents = start_cluster(tmp_path, 3)
    try:
        coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(
                spec=sim_spec("vm1", interval=0.3), primary_host="host-a", secondary_host="host-b", wait=True
            ),
            timeout=60,
        )
        text = coord.metrics()
        assert _has(text, 'colo_failovers_total{cause="primary_lost",domain="vm1"}'), "0 from the start"
        wait_for("checkpoints", lambda: coord.pair("vm1").checkpoint_counts.timer >= 3, timeout=10)
        a, b = (promtext.scrape(x.info["metrics"]) for x in agents[:2])
        assert promtext.total([a], "colo_checkpoint_pause_seconds_count", role="primary", domain="vm1") >= 3
        assert promtext.total([b], "colo_checkpoint_pause_seconds_count", role="secondary", domain="vm1") >= 3
        assert promtext.total([a], "colo_stream_sent_bytes_total", domain="vm1") > 0
        assert promtext.total([b], "colo_stream_received_bytes_total", domain="vm1") > 0
        assert _has(a, 'colo_divergences_total{domain="vm1",kind="mismatch"}') or _has(
            a, 'colo_divergences_total{kind="mismatch",domain="vm1"}'
        )
        state = [
            line
            for line in coord.metrics().splitlines()
            if line.startswith("colo_pair_state{") and 'domain="vm1"' in line
        ]
        assert (
            len(state) == 1
            and state[0].endswith(" 1.0")
            and re.search(r'state="(PROTECTED|CHECKPOINTING)"', state[0])
        ), state
        coord.stub.Failover(colo_pb2.FailoverRequest(domain="vm1"), timeout=30)
        wait_for("failed over", lambda: coord.pair("vm1").primary_host == "host-b", timeout=10)
        assert coord.metric("colo_failovers_total", cause="planned", domain="vm1") == 1
        coord.stub.UnprotectDomain(
            colo_pb2.UnprotectDomainRequest(domain="vm1", stop_domain=True), timeout=30
        )
        for agent in agents[:2]:
            left = promtext.scrape(agent.info["metrics"])
            assert not re.search(r'^colo_\w+\{[^}]*domain="vm1"', left, re.MULTILINE), agent.host_id
        assert 'colo_pair_state{domain="vm1",state="STOPPED"} 1.0' in coord.metrics()
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
