"""What an agent advertises is what others dial: a wildcard listen address
needs --advertise-host, and with it the coordinator, the peer and clients
reach the agent at the advertised host."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from cluster import start_agent
from coordinated import agents_alive, sim_spec, start_coordinator, wait_for

from colo_plane import addresses
from colo_plane._proto import colo_pb2

WILDCARD = ("--listen", "0.0.0.0:0", "--data-listen", "0.0.0.0:0", "--service-host", "0.0.0.0")


def test_a_wildcard_listen_address_without_advertise_host_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "colo_plane.cli", "agent", "--host-id", "h", *WILDCARD],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "needs --advertise-host" in proc.stderr
    assert "0.0.0.0" in proc.stderr


def test_advertised_host_is_what_the_coordinator_peers_and_clients_dial(tmp_path: Path) -> None:
    coord = start_coordinator(tmp_path)
    flags = (*WILDCARD, "--advertise-host", "127.0.0.1")
    agents = [start_agent(tmp_path, host, coord.address, *flags) for host in ("host-a", "host-b")]
    try:
        wait_for("2 agents registered", lambda: agents_alive(coord, 2))
        listed = coord.stub.ListAgents(colo_pb2.ListAgentsRequest(), timeout=5).agents
        for agent in listed:
            assert addresses.parse(agent.grpc_address)[0] == "127.0.0.1", agent
            assert addresses.parse(agent.data_address)[0] == "127.0.0.1", agent
        req = colo_pb2.ProtectDomainRequest(
            spec=sim_spec("adv", verify=False), primary_host="host-a", secondary_host="host-b", wait=True
        )
        pair = coord.stub.ProtectDomain(req, timeout=30).pair  # the primary dialled the peer's data port
        assert pair.state == colo_pb2.PAIR_STATE_PROTECTED
        host, port = addresses.parse(pair.service_endpoint)
        assert host == "127.0.0.1"
        with socket.create_connection((host, port), timeout=5) as client:
            client.sendall(b"PING\n")
            assert client.recv(64) == b"PONG\n"
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
