"""`colo bench service`: loadgen through the COLO proxy of a protected
domain, then through the same guest unprotected (same run, same guest, same
clients), at several divergence rates; prints the ratios.

A divergence rate is the share of replies in which primary and secondary
differ.  Each guest adds its nondeterministic field with probability p on
its own, so replies differ with probability 1 - (1 - p)^2: the bench sets p
from the rate asked for, and prints the rate the primary's proxy measured.

In rounds (harness): protected and unprotected alternate on the same guest,
and the figure is the median of the per-round ratios."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from colo_plane import promtext
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.rpc import duration
from colo_plane.tools import loadgen
from colo_plane.tools.bench import harness
from colo_plane.tools.localcluster import LocalCluster

GOAL = 0.8  # protected >= 0.8 x unprotected at 1 %
GOAL_DIVERGENCE = 0.01
ROUNDS = 5  # the fewest whose min-max is a ~95 % interval of the median (94 %)


SETTLE = 0.6  # seconds: the agent folds the proxy's counters into its metrics twice a second


def guest_probability(rate: float) -> float:
    """Per-guest probability of a nondeterministic field giving pairwise rate."""
    return 1.0 - math.sqrt(1.0 - rate)


@dataclass(frozen=True)
class Result:
    divergence: float
    clients: int
    rounds: int
    measured_divergence: float  # replies that differed / requests, from the primary's proxy
    guest_probability: float
    protected_ops_per_second: float  # median over rounds
    unprotected_ops_per_second: float
    ratio: float  # median over rounds of that round's protected / unprotected
    ratio_spread: harness.Spread
    protected_ms: harness.Tail  # every request's latency, pooled over rounds
    unprotected_ms: harness.Tail
    protected_p50_ms: float
    protected_p99_ms: float | None  # only with >= 1,000 requests
    unprotected_p50_ms: float
    unprotected_p99_ms: float | None
    checkpoints: int
    acknowledged_writes_lost: int
    noise: harness.Noise  # the unprotected service's variation across rounds
    verdict: harness.Verdict | None  # at the goal's divergence only
    warnings: list[str]


def _measure(address: str, clients: int, seconds: float) -> tuple[loadgen.Report, list[float]]:
    """The report, and every request's latency in ms."""
    ledger = loadgen.Ledger()

    async def go() -> loadgen.Report:
        resolve = loadgen.resolver(None, None, address)
        return await loadgen.run(resolve, clients=clients, seconds=seconds, ledger=ledger)

    report = asyncio.run(go())
    return report, [x * 1e3 for x in ledger.latencies]


def run(
    *,
    divergences: tuple[float, ...] = (0.0, 0.01, 0.10),
    clients: tuple[int, ...] = (8, 32),
    seconds: float = 3.0,
    pages: int = 262144,  # 1 GiB; half of it a store of 2M keys: no round fills it
    rounds: int = ROUNDS,
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
    """Rounds of protected and unprotected on the same guest (unprotect
    keeps it running; protect again starts from it), alternating which goes
    first: P U, U P, P U ..., so each switch of mode serves two measurements."""
    domain = f"bench-{int(rate * 1000)}-{clients}"
    p = guest_probability(rate)
    spec = colo_pb2.DomainSpec(
        domain=domain,
        checkpoint_interval=duration(5.0),
        sim=colo_pb2.SimDomainSpec(
            pages=pages, service_pages=pages // 2, dirty_rate=2_000, seed=11, divergence_probability=p
        ),
    )
    reports: list[loadgen.Report] = []
    latencies: dict[bool, list[float]] = {True: [], False: []}
    endpoint = ""
    protected_now = False
    checkpoints = 0
    differed = requests = 0.0

    def protected() -> float:
        nonlocal endpoint, protected_now, checkpoints, differed, requests
        if not protected_now:
            pair = _protect(stub, spec)
            endpoint, protected_now = pair.service_endpoint, True
        epoch = stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5).pair.epoch
        before = _diverged(primary_metrics)
        report, lat = _measure(endpoint, clients, seconds)
        time.sleep(SETTLE)
        after = _diverged(primary_metrics)
        differed, requests = differed + after[0] - before[0], requests + after[1] - before[1]
        checkpoints += stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5).pair.epoch - epoch
        reports.append(report)
        latencies[True] += lat
        return report.ops_per_second

    def unprotected() -> float:
        nonlocal protected_now
        if protected_now:
            stub.UnprotectDomain(
                colo_pb2.UnprotectDomainRequest(domain=domain, stop_domain=False), timeout=30
            )
            protected_now = False
        report, lat = _measure(endpoint, clients, seconds)
        reports.append(report)
        latencies[False] += lat
        return report.ops_per_second

    # The guest exists once it is first protected: round 0 starts protected.
    runs = harness.interleave(rounds, unprotected, protected, subject_first=True)
    stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain=domain, stop_domain=True), timeout=30)
    for report in reports:
        if report.errors:
            raise RuntimeError(f"bench: the load did not run cleanly: {report.errors[:3]}")

    ratio = harness.Spread.of([r.subject / r.baseline for r in runs])
    noise = harness.Noise.of("unprotected service's ops/s", [r.baseline for r in runs])
    prot, unprot = harness.Tail.of(latencies[True]), harness.Tail.of(latencies[False])
    verdict = harness.judge_median(ratio, GOAL, at_least=True) if rate == GOAL_DIVERGENCE else None
    return Result(
        divergence=rate,
        clients=clients,
        rounds=rounds,
        measured_divergence=differed / requests if requests else 0.0,
        guest_probability=p,
        protected_ops_per_second=harness.Spread.of([r.subject for r in runs]).median,
        unprotected_ops_per_second=harness.Spread.of([r.baseline for r in runs]).median,
        ratio=ratio.median,
        ratio_spread=ratio,
        protected_ms=prot,
        unprotected_ms=unprot,
        protected_p50_ms=prot.p50,
        protected_p99_ms=prot.p99,
        unprotected_p50_ms=unprot.p50,
        unprotected_p99_ms=unprot.p99,
        checkpoints=checkpoints,
        acknowledged_writes_lost=sum(r.acknowledged_writes_lost for r in reports),
        noise=noise,
        verdict=verdict,
        warnings=harness.warnings(f"{rate:.0%} divergence, {clients} clients", noise, verdict),
    )


def _tail(t: harness.Tail) -> str:
    label, value = t.top
    return f"{t.p50:.2f}/{value:.2f}" + ("" if label == "p99" else f" ({label})")


def render(results: list[Result]) -> str:
    rounds = results[0].rounds if results else 0
    lines = [
        f"colo bench service: {rounds} rounds of (protected, unprotected) on the same guest, "
        "alternating which goes first",
        f"{'diverge':>8}{'measured':>9}{'clients':>8}{'prot ops/s':>11}{'unprot ops/s':>13}{'ratio':>7}"
        f"{'min-max':>11}{'prot p50/p99 ms':>17}{'unprot p50/p99 ms':>19}{'requests':>10}{'ckpts':>6}"
        f"{'lost':>5}{'CV':>5}  goal",
    ]
    for r in results:
        lines.append(
            f"{r.divergence:>8.0%}{r.measured_divergence:>9.2%}{r.clients:>8}"
            f"{r.protected_ops_per_second:>11.0f}{r.unprotected_ops_per_second:>13.0f}{r.ratio:>7.2f}"
            f"{r.ratio_spread.range():>11}{_tail(r.protected_ms):>17}{_tail(r.unprotected_ms):>19}"
            f"{r.protected_ms.samples + r.unprotected_ms.samples:>10}{r.checkpoints:>6}"
            f"{r.acknowledged_writes_lost:>5}{r.noise.cv:>5.0%}  {r.verdict.word() if r.verdict else '-'}"
        )
    lines.append(
        "diverge = share of replies in which primary and secondary differ (each guest's field at "
        "1-sqrt(1-rate));\nmeasured = that share as the primary's proxy counted it; "
        "ratio = median over rounds of protected / unprotected throughput (same guest, same clients, "
        "same round);\nmin-max = of the per-round ratios (for 5 rounds also the median's 94 % interval); "
        "latencies pooled over rounds;\nCV = the machine's noise: the unprotected throughput's variation "
        f"across rounds; goal: ratio >= {GOAL} at {GOAL_DIVERGENCE:.0%} (? where the median's interval "
        "spans it: this run cannot tell)"
    )
    lines += harness.render_warnings([w for r in results for w in r.warnings])
    return "\n".join(lines)


def as_json(results: list[Result], *, poll_us: int = 0) -> dict[str, object]:
    return {
        "bench": "service",
        "poll_us": poll_us,
        "goal": GOAL,
        "cases": [asdict(r) for r in results],
        "warnings": [w for r in results for w in r.warnings],
    }
