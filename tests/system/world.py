"""What the tests that act on one pair share: a real coordinator with
agents by host name (Cluster), and what a refused call carries (refusal)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cluster import AgentProcess, start_agent
from coordinated import CoordinatorProcess, agents_alive, start_coordinator, wait_for

from colo_plane._proto import colo_pb2
from colo_plane.rpc import error_info

HOSTS = ("host-a", "host-b", "host-c")


class Cluster:
    """A coordinator and an agent per host (each with AGENT_FLAGS), all registered."""

    def __init__(
        self,
        tmp: Path,
        hosts: tuple[str, ...] = HOSTS,
        agent_flags: tuple[str, ...] = (),
        *coordinator_flags: str,
    ) -> None:
        self.coord: CoordinatorProcess = start_coordinator(tmp, *coordinator_flags)
        self.agents: dict[str, AgentProcess] = {
            h: start_agent(tmp, h, self.coord.address, *agent_flags) for h in hosts
        }
        wait_for("agents registered", lambda: agents_alive(self.coord, len(hosts)), timeout=15)

    def protect(
        self, spec: colo_pb2.DomainSpec, primary: str = "host-a", secondary: str = "host-b"
    ) -> colo_pb2.Pair:
        """ProtectDomain, waiting for PROTECTED."""
        req = colo_pb2.ProtectDomainRequest(
            spec=spec, primary_host=primary, secondary_host=secondary, wait=True
        )
        pair = self.coord.stub.ProtectDomain(req, timeout=60).pair
        assert pair.state == colo_pb2.PAIR_STATE_PROTECTED
        return pair

    def destroy(self, host: str, role: str) -> None:
        """The sim domain of ROLE on HOST destroyed (agents with --test-destroy-on-signal)."""
        os.kill(self.agents[host].proc.pid, signal.SIGUSR1 if role == "primary" else signal.SIGUSR2)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.coord.stop()


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, ErrorInfo.reason and metadata of a call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    info = error_info(err.value)
    assert info is not None, f"no ErrorInfo on {err.value.code()}: {err.value.details()}"
    assert info.domain == "colo.v1"
    return err.value.code(), info.reason, dict(info.metadata)
