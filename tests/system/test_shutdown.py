"""SIGTERM as the docs describe it: health goes NOT_SERVING first while the
server still answers (a probe sees it), in-flight calls get the grace
period, then the server stops; an open `colo watch` is told the
coordinator is going away and reconnects to the next one instead of
exiting 1."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from cluster import start_agent
from coordinated import agents_alive, free_port, start_coordinator, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from colo_plane.tools.localcluster import COLO

pytestmark = pytest.mark.system

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _seen_not_serving(address: str, service: str, until: float) -> bool:
    """Polls Check with fresh calls until NOT_SERVING, or the server stops answering."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            except grpc.RpcError:
                return False
            if reply.status == NOT_SERVING:
                return True
            time.sleep(0.02)
    return False


def _watch_statuses(address: str, out: list[int]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20):
                out.append(reply.status)
        except grpc.RpcError:
            pass


def test_sigterm_shows_not_serving_and_colo_watch_follows_the_next_coordinator(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    coord = start_coordinator(tmp_path, listen=listen)
    statuses: list[int] = []
    watcher = threading.Thread(target=_watch_statuses, args=(coord.address, statuses), daemon=True)
    watcher.start()
    cli = subprocess.Popen(
        [*COLO, "watch", "--coordinator", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    new = agent = None
    try:
        wait_for("health watch", lambda: statuses, timeout=10)
        time.sleep(1.0)  # the CLI's stream is open
        coord.proc.send_signal(signal.SIGTERM)
        assert _seen_not_serving(coord.address, "colo.v1.Coordinator", time.monotonic() + 5), (
            "no Check answered NOT_SERVING after SIGTERM"
        )
        assert coord.proc.wait(30) == 0
        watcher.join(10)
        assert NOT_SERVING in statuses, statuses
        time.sleep(0.5)
        assert cli.poll() is None, f"colo watch exited {cli.returncode}: {cli.stderr.read()}"
        new = start_coordinator(tmp_path, listen=listen, name="coordinator-2")
        agent = start_agent(tmp_path, "host-a", listen)
        wait_for("agent registered", lambda: agents_alive(new, 1), timeout=15)
        time.sleep(1.0)
        assert cli.poll() is None, f"colo watch exited {cli.returncode}: {cli.stderr.read()}"
    finally:
        cli.send_signal(signal.SIGINT)
        try:
            stdout, stderr = cli.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            cli.kill()
            stdout, stderr = cli.communicate()
        for daemon in (agent, new):
            if daemon is not None:
                daemon.stop()
        coord.stop()
    assert "going away" in stderr, stderr
    assert "AGENT_REGISTERED" in stdout and "host host-a" in stdout, stdout


def test_agent_sigterm_shows_not_serving_first(tmp_path: Path) -> None:
    coord = start_coordinator(tmp_path)
    agent = start_agent(tmp_path, "host-a", coord.address)
    try:
        wait_for("agent registered", lambda: agents_alive(coord, 1), timeout=15)
        agent.proc.send_signal(signal.SIGTERM)
        assert _seen_not_serving(agent.info["grpc"], "colo.v1.Agent", time.monotonic() + 5)
        assert agent.proc.wait(30) == 0
    finally:
        agent.stop()
        coord.stop()
