"""A real `colo coordinator` process with real `colo agent` processes on
loopback, and the small waits the coordinator tests share."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from cluster import AgentProcess, Daemon, start_agent

from colo_plane import promtext
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.tools import loadgen
from colo_plane.tools.localcluster import coordinator_args, launch

T = TypeVar("T")

# Fast failure detection, as the defaults: heartbeats every 0.1 s, lost after 0.5 s.
COORDINATOR_FLAGS = ("--heartbeat-interval", "0.1", "--heartbeat-timeout", "0.5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class CoordinatorProcess(Daemon):
    """A `colo coordinator` with a Coordinator stub."""

    stub: colo_pb2_grpc.CoordinatorStub = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stub = colo_pb2_grpc.CoordinatorStub(self.channel)

    @property
    def address(self) -> str:
        return self.info["grpc"]

    def pair(self, domain: str) -> colo_pb2.Pair:
        return self.stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5).pair

    def metrics(self) -> str:
        return promtext.scrape(self.info["metrics"], timeout=5)

    def metric(self, name: str, **labels: str) -> float:
        return promtext.total([self.metrics()], name, **labels)

    def events(self, domain: str = "", history: int = 10_000) -> list[colo_pb2.Event]:
        """Every event the coordinator still holds (a stream read with a short deadline)."""
        out = []
        stream = self.stub.WatchEvents(
            colo_pb2.WatchEventsRequest(domain=domain, history=history), timeout=1.0
        )
        try:
            for item in stream:
                out.append(item.event)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise
        return out


def start_coordinator(
    tmp: Path, *extra: str, listen: str = "127.0.0.1:0", name: str = "coordinator", db: Path | None = None
) -> CoordinatorProcess:
    args = coordinator_args(db or tmp / "colo.db", *COORDINATOR_FLAGS, *extra, listen=listen)
    return CoordinatorProcess(launch(tmp, name, args))


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0, every: float = 0.02) -> T:
    """Polls probe until it returns something truthy; fails with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what} (last: {last!r})")


def sim_spec(
    domain: str, *, pages: int = 1024, rate: int = 2000, interval: float = 0.3, verify: bool = True
) -> colo_pb2.DomainSpec:
    spec = colo_pb2.DomainSpec(
        domain=domain,
        verify=verify,
        sim=colo_pb2.SimDomainSpec(
            pages=pages, dirty_rate=rate, seed=7, pattern=colo_pb2.SIM_PATTERN_UNIFORM
        ),
    )
    spec.checkpoint_interval.FromNanoseconds(int(interval * 1e9))
    return spec


def agents_alive(coord: CoordinatorProcess, count: int) -> bool:
    reply = coord.stub.ListAgents(colo_pb2.ListAgentsRequest(alive_only=True), timeout=5)
    return len(reply.agents) >= count


def start_cluster(tmp: Path, hosts: int = 3, *flags: str) -> tuple[CoordinatorProcess, list[AgentProcess]]:
    coord = start_coordinator(tmp, *flags)
    agents = [
        start_agent(tmp, f"host-{chr(ord('a') + i)}", coord.address, "--verify", "--label", f"zone=z{i}")
        for i in range(hosts)
    ]
    wait_for(f"{hosts} agents registered", lambda: agents_alive(coord, hosts))
    return coord, agents


def loadgen_in_thread(
    coordinator: str,
    domain: str,
    seconds: float,
    *,
    clients: int = 6,
    ledger: loadgen.Ledger | None = None,
) -> tuple[threading.Thread, list[loadgen.Report]]:
    """colo loadgen's clients against domain (following its endpoint through the
    coordinator) in a thread; the report lands in the list when it ends.  Pass a
    ledger to watch the clients while they run."""
    out: list[loadgen.Report] = []

    def run() -> None:
        async def go() -> loadgen.Report:
            resolve = loadgen.resolver(coordinator, domain, None)
            return await loadgen.run(resolve, clients=clients, seconds=seconds, ledger=ledger)

        out.append(asyncio.run(go()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out
