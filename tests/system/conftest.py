"""Fixtures for system tests: real agent processes and a recording coordinator."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import AgentProcess, RecordingCoordinator, StartAgent, start_agent, start_recording_coordinator


@pytest.fixture
def recorder() -> Iterator[tuple[RecordingCoordinator, str]]:
    server, rec, address = start_recording_coordinator()
    yield rec, address
    server.stop(grace=None)


@pytest.fixture
def agents(tmp_path: Path, recorder: tuple[RecordingCoordinator, str]) -> Iterator[StartAgent]:
    started: list[AgentProcess] = []

    def start(host_id: str, *extra: str, wrap: Sequence[str] = ()) -> AgentProcess:
        agent = start_agent(tmp_path, host_id, recorder[1], *extra, wrap=wrap)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        code = agent.stop()
        assert code in (0, -9), f"agent {agent.host_id} exited with {code}:\n{agent.log()[-3000:]}"
