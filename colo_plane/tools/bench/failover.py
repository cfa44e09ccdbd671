"""`colo bench failover`: trials of kill -9 of the primary's agent under
load; for each, the time from the kill to the first successful reply from
the new primary, and the acknowledged writes lost (must be 0).  No baseline
to divide by: the times are reported as pooled samples (harness), and a
fixed probe between trials measures the machine's noise."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from colo_plane import addresses
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.rpc import duration
from colo_plane.tools import loadgen
from colo_plane.tools.bench import harness
from colo_plane.tools.bench.loopback import Probe
from colo_plane.tools.localcluster import LocalCluster, Process

HOSTS = ("host-a", "host-b", "host-c")
GOAL_SECONDS = 1.0


@dataclass(frozen=True)
class Trial:
    victim: str
    new_primary: str
    first_reply_s: float
    acknowledged_writes: int
    acknowledged_writes_lost: int
    reads_of_values_never_written: int
    probe_gbps: float  # the noise probe just before the trial


async def _first_reply_after(
    stub: colo_pb2_grpc.CoordinatorStub, domain: str, old: str, start: float
) -> float:
    """Seconds from start to the first PONG from an endpoint other than old."""
    while True:
        with contextlib.suppress(OSError, TimeoutError, grpc.aio.AioRpcError, ValueError):
            pair = (await stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=1.0)).pair
            if pair.service_endpoint and pair.service_endpoint != old:
                host, port = addresses.parse(pair.service_endpoint)
                async with asyncio.timeout(1.0):  # not wait_for: it can swallow a cancel on 3.11
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"PING\n")
                async with asyncio.timeout(2.0):
                    reply = await reader.readline()
                writer.close()
                if reply.startswith(b"PONG"):
                    return time.monotonic() - start
        await asyncio.sleep(0.002)


def _trial(
    cluster: LocalCluster, agents: dict[str, Process], coordinator: str, domain: str, probe: Probe
) -> Trial:
    probe_gbps = probe.gbps()  # between trials, before the load: the machine as the trial meets it

    async def go() -> Trial:
        channel = grpc.aio.insecure_channel(coordinator)
        stub = colo_pb2_grpc.CoordinatorStub(channel)
        protected = colo_pb2.PAIR_STATE_PROTECTED
        while True:
            pair = (await stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5)).pair
            if pair.state == protected:
                break
            await asyncio.sleep(0.05)
        stop = asyncio.Event()
        load = asyncio.create_task(
            loadgen.run(loadgen.resolver(coordinator, domain, None), clients=4, seconds=60, stop=stop)
        )
        await asyncio.sleep(1.0)
        victim, old = pair.primary_host, pair.service_endpoint
        agents[victim].kill()
        start = time.monotonic()
        first = await asyncio.wait_for(_first_reply_after(stub, domain, old, start), 30)
        await asyncio.sleep(0.5)
        stop.set()
        report = await load
        new = (await stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5)).pair.primary_host
        await channel.close(None)
        if report.acknowledged_writes == 0 or report.errors:
            raise RuntimeError(f"bench: the trial's load did not run cleanly: {report.errors[:3]}")
        return Trial(
            victim,
            new,
            first,
            report.acknowledged_writes,
            report.acknowledged_writes_lost,
            report.reads_of_values_never_written,
            probe_gbps,
        )

    trial = asyncio.run(go())
    # The victim's host comes back, empty, for the next trial's re-protection.
    agents[trial.victim] = cluster.start_agent(trial.victim, coordinator)
    return trial


def run(*, trials: int = 10) -> list[Trial]:
    with tempfile.TemporaryDirectory(prefix="colo-bench-") as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            coordinator = cluster.start_coordinator()
            agents = {h: cluster.start_agent(h, coordinator.grpc) for h in HOSTS}
            with grpc.insecure_channel(coordinator.grpc) as channel:
                stub = colo_pb2_grpc.CoordinatorStub(channel)
                deadline = time.monotonic() + 15
                while len(stub.ListAgents(colo_pb2.ListAgentsRequest(alive_only=True), timeout=5).agents) < 3:
                    if time.monotonic() > deadline:
                        raise RuntimeError("agents did not register")
                    time.sleep(0.05)
                spec = colo_pb2.DomainSpec(
                    domain="bench",
                    checkpoint_interval=duration(1.0),
                    # A key-value store of ~786k slots: every trial's writes fit (each
                    # trial acknowledges ~30k and they add up; 131k slots filled).
                    sim=colo_pb2.SimDomainSpec(
                        pages=65536,
                        service_pages=49152,
                        dirty_rate=2_000,
                        seed=5,
                        divergence_probability=0.01,
                    ),
                )
                stub.ProtectDomain(
                    colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a", wait=True), timeout=60
                )
            probe = Probe()
            try:
                return [_trial(cluster, agents, coordinator.grpc, "bench", probe) for _ in range(trials)]
            finally:
                probe.close()
        finally:
            cluster.stop_all()


@dataclass(frozen=True)
class Summary:
    trials: int
    first_reply_s: harness.Tail
    tail: str  # the highest percentile the trials carry (the goal is on the max)
    noise: harness.Noise
    verdict: harness.Verdict  # the tail against GOAL_SECONDS
    writes_lost: int
    warnings: list[str]


def summarize(trials: list[Trial]) -> Summary:
    times = [t.first_reply_s for t in trials]
    tail = harness.Tail.of(times)
    noise = harness.Noise.of("loopback probe", [t.probe_gbps for t in trials])
    # The goal holds for every trial: the max, whatever the count.
    verdict = harness.judge_tail("max", times, GOAL_SECONDS)
    return Summary(
        len(trials),
        tail,
        tail.top[0],
        noise,
        verdict,
        sum(t.acknowledged_writes_lost for t in trials),
        harness.warnings("failover", noise, verdict, fmt=".3f"),
    )


def render(trials: list[Trial]) -> str:
    s = summarize(trials)
    lines = [f"{'trial':>5}  {'killed':<8}{'new primary':<13}{'first reply s':>14}{'acked':>8}{'lost':>6}"]
    for i, t in enumerate(trials, 1):
        lines.append(
            f"{i:>5}  {t.victim:<8}{t.new_primary:<13}{t.first_reply_s:>14.3f}"
            f"{t.acknowledged_writes:>8}{t.acknowledged_writes_lost:>6}"
        )
    lines.append(
        f"first reply from the new primary: {s.first_reply_s.text('s', '.3f')}; "
        f"goal: every trial <= {GOAL_SECONDS} s: {s.verdict.word()}; writes lost: {s.writes_lost}"
    )
    lines.append(f"{s.noise.text()} (a fixed 64 MiB loopback transfer before each trial)")
    lines += harness.render_warnings(s.warnings)
    return "\n".join(lines)


def as_json(trials: list[Trial]) -> dict[str, object]:
    s = summarize(trials)
    return {
        "bench": "failover",
        "p50_s": s.first_reply_s.p50,
        "max_s": s.first_reply_s.max,
        "writes_lost": s.writes_lost,
        "summary": asdict(s),
        "trials": [asdict(t) for t in trials],
        "warnings": s.warnings,
    }
