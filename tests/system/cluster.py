"""Real processes for the system tests: `colo agent` daemons on loopback,
and a recording Coordinator (a real gRPC server in the test process)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.tools.localcluster import Process, agent_args, launch


class RecordingCoordinator(colo_pb2_grpc.CoordinatorServicer):
    """Accepts registrations and heartbeats; records every sync point, whether
    reported by a ReportSyncPoint call or on a ReportSyncPoints stream."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sync_points: list[colo_pb2.ReportSyncPointRequest] = []
        self.registered: dict[str, colo_pb2.RegisterAgentRequest] = {}
        self.checkpoint_requests: list[colo_pb2.RequestCheckpointRequest] = []
        self.unary_reports = 0  # sync points that came by ReportSyncPoint rather than on a stream

    def RegisterAgent(self, request: Any, context: Any) -> colo_pb2.RegisterAgentResponse:  # noqa: N802
        with self.lock:
            self.registered[request.host_id] = request
        return colo_pb2.RegisterAgentResponse()

    def Heartbeat(self, request: Any, context: Any) -> colo_pb2.HeartbeatResponse:  # noqa: N802
        return colo_pb2.HeartbeatResponse()

    def RequestCheckpoint(self, request: Any, context: Any) -> colo_pb2.RequestCheckpointResponse:  # noqa: N802
        with self.lock:
            self.checkpoint_requests.append(request)
        return colo_pb2.RequestCheckpointResponse(domain=request.domain, generation=request.generation)

    def ReportSyncPoint(self, request: Any, context: Any) -> colo_pb2.ReportSyncPointResponse:  # noqa: N802
        with self.lock:
            self.sync_points.append(request)
            self.unary_reports += 1
        return colo_pb2.ReportSyncPointResponse(generation=request.generation)

    def ReportSyncPoints(self, request_iterator: Any, context: Any) -> colo_pb2.ReportSyncPointsResponse:  # noqa: N802
        accepted = 0
        for message in request_iterator:
            with self.lock:
                self.sync_points.extend(message.points)
            accepted += len(message.points)
        return colo_pb2.ReportSyncPointsResponse(accepted=accepted)

    def points(self, domain: str) -> list[colo_pb2.ReportSyncPointRequest]:
        with self.lock:
            return [p for p in self.sync_points if p.domain == domain]

    def wait_for(
        self, domain: str, count: int, timeout: float = 10.0
    ) -> list[colo_pb2.ReportSyncPointRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            points = self.points(domain)
            if len(points) >= count:
                return points
            time.sleep(0.02)
        raise AssertionError(f"only {len(self.points(domain))} of {count} sync points of {domain} arrived")


def start_recording_coordinator() -> tuple[grpc.Server, RecordingCoordinator, str]:
    # Each agent's ReportSyncPoints stream holds a worker for as long as it is open.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    recorder = RecordingCoordinator()
    colo_pb2_grpc.add_CoordinatorServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, recorder, f"127.0.0.1:{port}"


@dataclass
class Daemon:
    """A `colo` daemon started by colo_plane.tools.localcluster.launch, with a
    gRPC channel to it."""

    process: Process
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.info["grpc"])

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    @property
    def info(self) -> dict[str, str]:
        return self.process.info

    @property
    def log_path(self) -> Path:
        return self.process.log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.channel.close()
        return self.process.stop(sig)


@dataclass
class AgentProcess(Daemon):
    """A `colo agent` with an Agent stub."""

    host_id: str = ""
    stub: colo_pb2_grpc.AgentStub = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stub = colo_pb2_grpc.AgentStub(self.channel)

    @property
    def data(self) -> str:
        return self.info["data"]

    def status(self, domain: str, include_hash: bool = False) -> colo_pb2.DomainStatus:
        reply = self.stub.GetStatus(
            colo_pb2.GetStatusRequest(domain=domain, include_hash=include_hash), timeout=10
        )
        return reply.domains[0]


StartAgent = Callable[..., "AgentProcess"]


def start_agent(
    tmp: Path, host_id: str, coordinator: str, *extra: str, wrap: Sequence[str] = ()
) -> AgentProcess:
    process = launch(tmp, host_id, agent_args(host_id, coordinator, *extra), wrap)
    return AgentProcess(process, host_id=host_id)


def sim_spec(
    domain: str,
    *,
    pages: int = 4096,
    rate: int = 20_000,
    verify: bool = True,
    seed: int = 42,
    divergence: float = 0.0,
    service_pages: int = 0,
) -> colo_pb2.DomainSpec:
    return colo_pb2.DomainSpec(
        domain=domain,
        verify=verify,
        sim=colo_pb2.SimDomainSpec(
            pages=pages,
            dirty_rate=rate,
            seed=seed,
            pattern=colo_pb2.SIM_PATTERN_UNIFORM,
            divergence_probability=divergence,
            service_pages=service_pages,
        ),
    )


def protect(
    primary: AgentProcess,
    secondary: AgentProcess,
    spec: colo_pb2.DomainSpec,
    *,
    generation: int = 1,
    epoch: int = 1,
    secret: bytes = b"s" * 32,
) -> colo_pb2.StartPrimaryResponse:
    """The coordinator's part of a first boot: PrepareSecondary, then StartPrimary
    (create: a first protection, the sim domain is made on the primary)."""
    pair: dict[str, Any] = {"domain": spec.domain, "generation": generation, "epoch": epoch}
    pair.update(spec=spec, pair_secret=secret)  # what both requests carry
    to_secondary = colo_pb2.PrepareSecondaryRequest(
        **pair, peer_host_id=primary.host_id, peer_data_address=primary.data
    )
    prepared = secondary.stub.PrepareSecondary(to_secondary, timeout=10)
    request = colo_pb2.StartPrimaryRequest(
        **pair, peer_host_id=secondary.host_id, peer_data_address=prepared.data_address, create_domain=True
    )
    return primary.stub.StartPrimary(request, timeout=60)


def start_primary(
    domain: str,
    *,
    create: bool,
    peer: str = "127.0.0.1:1",
    spec: colo_pb2.DomainSpec | None = None,
    generation: int = 1,
    epoch: int = 1,
    secret: bytes = b"s" * 32,
    peer_host: str = "",
) -> colo_pb2.StartPrimaryRequest:
    """StartPrimary of DOMAIN (a 64-page sim guest unless SPEC) towards PEER's data port."""
    return colo_pb2.StartPrimaryRequest(
        domain=domain,
        generation=generation,
        epoch=epoch,
        spec=spec or sim_spec(domain, pages=64),
        pair_secret=secret,
        peer_host_id=peer_host,
        peer_data_address=peer,
        create_domain=create,
    )


def checkpoint(
    primary: AgentProcess, domain: str, generation: int, epoch: int
) -> colo_pb2.AgentCheckpointResponse:
    return primary.stub.Checkpoint(
        colo_pb2.AgentCheckpointRequest(
            domain=domain, generation=generation, epoch=epoch, trigger=colo_pb2.CHECKPOINT_TRIGGER_MANUAL
        ),
        timeout=30,
    )
