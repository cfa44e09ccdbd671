"""What each daemon's /metrics holds, as Prometheus scrapes it: its own
families only (an agent exporting colo_agents_alive 0 hid a coordinator
that was down), every known label set of its counters at 0 from the
start (a series born at 1 at its first event reads as no increase, and the
alerts on the first failover or store error stayed silent), and an
exposition promtool accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cluster import start_agent
from coordinated import agents_alive, start_coordinator, wait_for

from colo_plane import promtext

pytestmark = pytest.mark.system

# colo_failovers_total{cause,domain} is made at 0 per pair when it is created
# (test_domain_metrics.py).
COORDINATOR_ZEROS = [
    'colo_store_errors_total{what="pairs"}',
    'colo_store_errors_total{what="agent"}',
    'colo_checkpoints_failed_total{trigger="timer"}',
    'colo_checkpoints_total{trigger="request"}',
    'colo_agents_lost_total{reason="refused"}',
    'colo_sync_reports_refused_total{reason="unknown_host"}',
]
AGENT_ZEROS = [
    'colo_data_handshake_failures_total{reason="bad_proof"}',
    'colo_data_handshake_failures_total{reason="timeout"}',
    'colo_fenced_total{what="command"}',
]


def _zero(text: str, series: str) -> bool:
    return re.search(rf"^{re.escape(series)} 0\.0$", text, re.MULTILINE) is not None


def _families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))


def test_each_daemon_exports_its_own_families_with_every_counter_at_zero(tmp_path: Path) -> None:
    coord = start_coordinator(tmp_path)
    agent = start_agent(tmp_path, "host-a", coord.address)
    try:
        wait_for("agent registered", lambda: agents_alive(coord, 1), timeout=15)
        coordinator_text = coord.metrics()
        agent_text = promtext.scrape(agent.info["metrics"], timeout=5)
        assert [s for s in COORDINATOR_ZEROS if not _zero(coordinator_text, s)] == []
        assert [s for s in AGENT_ZEROS if not _zero(agent_text, s)] == []
        coordinator_families, agent_families = _families(coordinator_text), _families(agent_text)
        assert "colo_agents_alive" in coordinator_families and "colo_agents_alive" not in agent_families
        assert "colo_pairs" not in agent_families and "colo_failovers_total" not in agent_families
        assert "colo_checkpoint_pause_seconds" in agent_families
        assert "colo_checkpoint_pause_seconds" not in coordinator_families
        assert {"grpc_server_handled_total", "colo_build_info"} <= coordinator_families & agent_families
        if shutil.which("promtool"):
            for text in (coordinator_text, agent_text):
                out = subprocess.run(
                    ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
                )
                assert "error" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    finally:
        agent.stop()
        coord.stop()
