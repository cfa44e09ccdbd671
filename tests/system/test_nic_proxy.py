"""A pair whose spec names a guest network, end to end: a real coordinator
and two real agents run in the netlab's host namespace, each agent's NIC
proxy on its guest's veth; the guests are two namespaces running the same
kvserver, whose reply field is random with some probability.  A client in
the client namespace talks to the guest's address through the proxies.

What it shows: divergent replies start armed checkpoints (trigger
REQUEST), every acknowledged write reads back, and after kill -9 of the
primary's agent the client's same TCP connection carries on against the
promoted secondary (its sequence numbers rewritten) with no write lost.
What it does not: the sim backend's memory is not the guests' state (the
namespaces' kernels are), so no checkpoint copies a guest here; the two
kvservers agree because both see every SET in the same order."""

from __future__ import annotations

import io
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import AgentProcess
from coordinated import COORDINATOR_FLAGS, CoordinatorProcess, wait_for
from relay import OneWayRelay

from colo_plane import addresses
from colo_plane._proto import colo_pb2
from colo_plane.tools.localcluster import agent_args, coordinator_args, launch
from colo_plane.tools.netlab import netns

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not netns.available(), reason="needs root and ip netns"),
]

PORT = 7000
DIVERGENCE = 0.2  # of the kvserver's replies carry a random field


class InHost:
    """Daemons in the lab's host namespace, reached through relays from here."""

    def __init__(self, lab: netns.Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.wrap = ["ip", "netns", "exec", lab.host]
        self.relays: list[OneWayRelay] = []
        self.daemons: list[CoordinatorProcess | AgentProcess] = []

    def _relayed(self, info: dict[str, str]) -> str:
        """info's gRPC address in the host namespace; a relay's here in its place."""
        inside = info["grpc"]
        target = addresses.parse(inside)

        def dial() -> socket.socket:
            return netns.in_netns(self.lab.host, lambda: socket.create_connection(target, timeout=2))

        relay = OneWayRelay(target, dial)
        self.relays.append(relay)
        info["grpc"] = relay.address
        return inside

    def coordinator(self) -> tuple[CoordinatorProcess, str]:
        args = coordinator_args(self.tmp / "colo.db", *COORDINATOR_FLAGS)
        process = launch(self.tmp, "coordinator", args, self.wrap)
        inside = self._relayed(process.info)
        coord = CoordinatorProcess(process)
        self.daemons.append(coord)
        return coord, inside

    def agent(self, host_id: str, coordinator: str) -> AgentProcess:
        process = launch(self.tmp, host_id, agent_args(host_id, coordinator), self.wrap)
        self._relayed(process.info)
        agent = AgentProcess(process, host_id=host_id)
        self.daemons.append(agent)
        return agent

    def close(self) -> None:
        for daemon in reversed(self.daemons):
            if daemon.proc.poll() is None:
                daemon.stop()
        for relay in self.relays:
            relay.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[InHost]:
    with netns.lab() as lab:
        lab.start_server(lab.primary, PORT, DIVERGENCE)
        lab.start_server(lab.secondary, PORT, DIVERGENCE)
        world = InHost(lab, tmp_path)
        try:
            yield world
        finally:
            world.close()


def nic_spec(domain: str) -> colo_pb2.DomainSpec:
    spec = colo_pb2.DomainSpec(
        domain=domain,
        sim=colo_pb2.SimDomainSpec(pages=256, dirty_rate=100, seed=3),
        network=colo_pb2.NetworkSpec(interface="pg", uplink="up0", secondary_interface="sg"),
    )
    spec.checkpoint_interval.FromSeconds(5)  # long: the checkpoints seen are the divergences'
    return spec


def kv(f: io.BufferedIOBase, line: str) -> str:
    """One request, its reply line."""
    f.write(f"{line}\n".encode())
    f.flush()
    reply = f.readline()
    assert reply, f"connection closed after {line!r}"
    return reply.decode().strip()


def test_a_nic_pair_checkpoints_on_divergence_and_survives_losing_its_primary(host: InHost) -> None:
    coord, inside = host.coordinator()
    a = host.agent("host-a", inside)
    b = host.agent("host-b", inside)
    wait_for(
        "2 agents", lambda: len(coord.stub.ListAgents(colo_pb2.ListAgentsRequest(), timeout=5).agents) == 2
    )
    coord.stub.ProtectDomain(
        colo_pb2.ProtectDomainRequest(
            spec=nic_spec("web"), primary_host="host-a", secondary_host="host-b", wait=True
        ),
        timeout=60,
    )
    wait_for("protected", lambda: coord.pair("web").state == colo_pb2.PAIR_STATE_PROTECTED, timeout=30)

    acked: dict[str, str] = {}
    with host.lab.connect(PORT) as conn:
        f = conn.makefile("rwb")
        for i in range(60):
            assert kv(f, f"SET k{i} v{i}").startswith("OK ")
            acked[f"k{i}"] = f"v{i}"
        for k, v in acked.items():
            assert kv(f, f"GET {k}").split()[1] == v
        counts = coord.pair("web").checkpoint_counts
        assert counts.request > 0, counts  # divergent replies started checkpoints
        assert "NIC proxy on sg" in b.log()

        a.stop(signal.SIGKILL)  # the primary host is lost
        wait_for(
            "promoted",
            lambda: (
                coord.pair("web").primary_host == "host-b"
                and coord.pair("web").state == colo_pb2.PAIR_STATE_UNPROTECTED
            ),
            timeout=30,
        )
        # The same connection, now against the promoted secondary's guest.
        lost = [k for k, v in acked.items() if kv(f, f"GET {k}").split()[1] != v]
        assert lost == []
        assert kv(f, "SET after failover").startswith("OK ")
        assert kv(f, "GET after").split()[1] == "failover"
    for ns in (host.lab.secondary, host.lab.client):
        tcp = host.lab.tcp_stats(ns)
        assert tcp["EstabResets"] == 0, (ns, tcp)
