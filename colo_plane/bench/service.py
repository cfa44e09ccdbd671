"""`colo bench service`: loadgen through the COLO proxy of a protected
domain, then through the same guest unprotected (same run, same guest, same
clients), at several divergence probabilities; prints the ratios."""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from colo_plane import loadgen
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.localcluster import LocalCluster
from colo_plane.rpc import duration

GOAL = 0.8  # protected >= 0.8 x unprotected at 1 %


@dataclass(frozen=True)
class Result:
    divergence: float
    protected_ops_per_second: float
    unprotected_ops_per_second: float
    ratio: float
    protected_p50_ms: float
    protected_p99_ms: float
    unprotected_p50_ms: float
    unprotected_p99_ms: float
    checkpoints: int
    acknowledged_writes_lost: int


def _measure(address: str, clients: int, seconds: float) -> loadgen.Report:
    async def go() -> loadgen.Report:
        return await loadgen.run(loadgen.resolver(None, None, address), clients=clients, seconds=seconds)

    return asyncio.run(go())


def run(
    *,
    divergences: tuple[float, ...] = (0.0, 0.01, 0.10),
    clients: int = 8,
    seconds: float = 10.0,
    pages: int = 16384,
) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="colo-bench-") as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            coordinator = cluster.start_coordinator()
            for host in ("host-a", "host-b"):
                cluster.start_agent(host, coordinator.grpc)
            channel = grpc.insecure_channel(coordinator.grpc)
            stub = colo_pb2_grpc.CoordinatorStub(channel)
            deadline = time.monotonic() + 15
            while len(stub.ListAgents(colo_pb2.ListAgentsRequest(alive_only=True), timeout=5).agents) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("agents did not register")
                time.sleep(0.05)
            results = [_one(stub, p, clients, seconds, pages) for p in divergences]
            channel.close()
            return results
        finally:
            cluster.stop_all()


def _one(stub: colo_pb2_grpc.CoordinatorStub, p: float, clients: int, seconds: float, pages: int) -> Result:
    domain = f"bench-{int(p * 1000)}"
    spec = colo_pb2.DomainSpec(
        domain=domain,
        checkpoint_interval=duration(5.0),
        sim=colo_pb2.SimDomainSpec(pages=pages, dirty_rate=2_000, seed=11, divergence_probability=p),
    )
    pair = stub.ProtectDomain(
        colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a", secondary_host="host-b", wait=True),
        timeout=60,
    ).pair
    address = pair.service_endpoint
    protected = _measure(address, clients, seconds)
    checkpoints = stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5).pair.epoch - pair.epoch
    stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain=domain, stop_domain=False), timeout=30)
    unprotected = _measure(address, clients, seconds)
    return Result(
        divergence=p,
        protected_ops_per_second=protected.ops_per_second,
        unprotected_ops_per_second=unprotected.ops_per_second,
        ratio=protected.ops_per_second / unprotected.ops_per_second,
        protected_p50_ms=protected.p50_ms,
        protected_p99_ms=protected.p99_ms,
        unprotected_p50_ms=unprotected.p50_ms,
        unprotected_p99_ms=unprotected.p99_ms,
        checkpoints=checkpoints,
        acknowledged_writes_lost=protected.acknowledged_writes_lost + unprotected.acknowledged_writes_lost,
    )


def render(results: list[Result]) -> str:
    lines = [
        f"{'diverge':>8}{'prot ops/s':>12}{'unprot ops/s':>14}{'ratio':>7}{'prot p50/p99 ms':>18}"
        f"{'unprot p50/p99 ms':>20}{'ckpts':>7}{'lost':>6}"
    ]
    for r in results:
        lines.append(
            f"{r.divergence:>8.0%}{r.protected_ops_per_second:>12.0f}{r.unprotected_ops_per_second:>14.0f}"
            f"{r.ratio:>7.2f}{r.protected_p50_ms:>9.2f}/{r.protected_p99_ms:<8.2f}"
            f"{r.unprotected_p50_ms:>11.2f}/{r.unprotected_p99_ms:<8.2f}{r.checkpoints:>7}{r.acknowledged_writes_lost:>6}"
        )
    lines.append(
        f"ratio = protected / unprotected throughput (same guest, same clients); goal >= {GOAL} at 1 %"
    )
    return "\n".join(lines)


def as_json(results: list[Result]) -> dict[str, object]:
    return {"bench": "service", "cases": [asdict(r) for r in results]}
