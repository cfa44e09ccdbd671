"""`colo bench service`: loadgen through the COLO proxy of a protected
domain, then through the same guest unprotected (same run, same guest, same
clients), at several divergence rates; prints the ratios.

A divergence rate is the share of replies in which primary and secondary
differ.  Each guest adds its nondeterministic field with probability p on
its own, so replies differ with probability 1 - (1 - p)^2: the bench sets p
from the rate asked for, and prints the rate the primary's proxy measured."""

from __future__ import annotations

import asyncio
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from colo_plane import loadgen, promtext
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.localcluster import LocalCluster
from colo_plane.rpc import duration

GOAL = 0.8  # protected >= 0.8 x unprotected at 1 %


SETTLE = 0.6  # seconds: the agent folds the proxy's counters into its metrics twice a second


def guest_probability(rate: float) -> float:
    """Per-guest probability of a nondeterministic field giving pairwise rate."""
    return 1.0 - math.sqrt(1.0 - rate)


@dataclass(frozen=True)
class Result:
    divergence: float
    clients: int
    measured_divergence: float  # replies that differed / requests, from the primary's proxy
    guest_probability: float
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
    clients: tuple[int, ...] = (8, 32),
    seconds: float = 5.0,
    pages: int = 262144,  # 1 GiB; half of it a store of 2M keys: no round fills it
    rounds: int = 3,
    poll_us: int = 0,
) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="colo-bench-") as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            coordinator = cluster.start_coordinator()
            poll = ("--poll-us", str(poll_us))
            primary = cluster.start_agent("host-a", coordinator.grpc, *poll)
            cluster.start_agent("host-b", coordinator.grpc, *poll)
            channel = grpc.insecure_channel(coordinator.grpc)
            stub = colo_pb2_grpc.CoordinatorStub(channel)
            deadline = time.monotonic() + 15
            while len(stub.ListAgents(colo_pb2.ListAgentsRequest(alive_only=True), timeout=5).agents) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("agents did not register")
                time.sleep(0.05)
            results = [
                _one(
                    stub,
                    primary.info["metrics"],
                    p,
                    clients=n,
                    seconds=seconds,
                    pages=pages,
                    rounds=rounds,
                )
                for p in divergences
                for n in clients
            ]
            channel.close()
            return results
        finally:
            cluster.stop_all()


def _protect(stub: colo_pb2_grpc.CoordinatorStub, spec: colo_pb2.DomainSpec) -> colo_pb2.Pair:
    req = colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a", secondary_host="host-b", wait=True)
    pair: colo_pb2.Pair = stub.ProtectDomain(req, timeout=60).pair
    return pair


def _diverged(metrics_address: str) -> tuple[float, float]:
    """(replies that differed or came late, requests) so far, at the primary."""
    text = promtext.scrape(metrics_address)
    return promtext.total([text], "colo_divergences_total"), promtext.total(
        [text], "colo_proxy_requests_total"
    )


def _one(
    stub: colo_pb2_grpc.CoordinatorStub,
    primary_metrics: str,
    rate: float,
    *,
    clients: int,
    seconds: float,
    pages: int,
    rounds: int,
) -> Result:
    """Alternates protected and unprotected runs on the same guest (unprotect
    keeps it running; protect again starts from it); medians of each."""
    domain = f"bench-{int(rate * 1000)}-{clients}"
    p = guest_probability(rate)
    spec = colo_pb2.DomainSpec(
        domain=domain,
        checkpoint_interval=duration(5.0),
        sim=colo_pb2.SimDomainSpec(
            pages=pages, service_pages=pages // 2, dirty_rate=2_000, seed=11, divergence_probability=p
        ),
    )
    protected: list[loadgen.Report] = []
    unprotected: list[loadgen.Report] = []
    checkpoints = 0
    differed = requests = 0.0
    for _ in range(rounds):
        pair = _protect(stub, spec)
        before = _diverged(primary_metrics)
        protected.append(_measure(pair.service_endpoint, clients, seconds))
        time.sleep(SETTLE)
        after = _diverged(primary_metrics)
        differed, requests = differed + after[0] - before[0], requests + after[1] - before[1]
        checkpoints += stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5).pair.epoch - pair.epoch
        stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain=domain, stop_domain=False), timeout=30)
        unprotected.append(_measure(pair.service_endpoint, clients, seconds))
    stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain=domain, stop_domain=True), timeout=30)
    for report in protected + unprotected:
        if report.errors:
            raise RuntimeError(f"bench: the load did not run cleanly: {report.errors[:3]}")

    def med(reports: list[loadgen.Report], field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in reports))

    prot, unprot = med(protected, "ops_per_second"), med(unprotected, "ops_per_second")
    return Result(
        divergence=rate,
        clients=clients,
        measured_divergence=differed / requests if requests else 0.0,
        guest_probability=p,
        protected_ops_per_second=prot,
        unprotected_ops_per_second=unprot,
        ratio=prot / unprot,
        protected_p50_ms=med(protected, "p50_ms"),
        protected_p99_ms=med(protected, "p99_ms"),
        unprotected_p50_ms=med(unprotected, "p50_ms"),
        unprotected_p99_ms=med(unprotected, "p99_ms"),
        checkpoints=checkpoints,
        acknowledged_writes_lost=sum(r.acknowledged_writes_lost for r in protected + unprotected),
    )


def render(results: list[Result]) -> str:
    lines = [
        f"{'diverge':>8}{'measured':>9}{'clients':>8}{'prot ops/s':>12}{'unprot ops/s':>14}{'ratio':>7}"
        f"{'prot p50/p99 ms':>18}{'unprot p50/p99 ms':>20}{'ckpts':>7}{'lost':>6}"
    ]
    for r in results:
        lines.append(
            f"{r.divergence:>8.0%}{r.measured_divergence:>9.2%}{r.clients:>8}{r.protected_ops_per_second:>12.0f}{r.unprotected_ops_per_second:>14.0f}"
            f"{r.ratio:>7.2f}{r.protected_p50_ms:>9.2f}/{r.protected_p99_ms:<8.2f}"
            f"{r.unprotected_p50_ms:>11.2f}/{r.unprotected_p99_ms:<8.2f}{r.checkpoints:>7}{r.acknowledged_writes_lost:>6}"
        )
    lines.append(
        "diverge = share of replies in which primary and secondary differ (each guest's field at "
        "1-sqrt(1-rate));\nmeasured = that share as the primary's proxy counted it; "
        f"ratio = protected / unprotected throughput (same guest, same clients); goal >= {GOAL} at 1 %"
    )
    return "\n".join(lines)


def as_json(results: list[Result], *, poll_us: int = 0) -> dict[str, object]:
    return {"bench": "service", "poll_us": poll_us, "cases": [asdict(r) for r in results]}
