"""`colo bench control`: the coordinator's control path alone.  A real
coordinator (in this process, real gRPC, real SQLite) runs against fake
agents in a few other processes: real gRPC Agent servers that each host
many fake hosts and ack every command at once, and whose primaries send
RequestCheckpoint at a set rate.  Measures request -> issued latency
inside the coordinator and request -> Agent.Checkpoint received end to end.
In rounds (harness): each round is a slice of the single-pair requests and
of the load, alternating with a fixed loopback probe whose variation across
rounds is the machine's noise; latencies are pooled over the rounds."""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from colo_plane import __version__, serving
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.coordinator import server as coordinator_server
from colo_plane.coordinator.settings import Settings
from colo_plane.rpc import duration
from colo_plane.tools.bench import harness
from colo_plane.tools.bench.loopback import Probe

RPC_TIMEOUT = 5.0
LOAD_TAIL = 0.2
SINGLE_GAP = 0.002  # between single-pair requests: each one meets an idle coordinator
ROUNDS = 5  # the 30 s of load in 6 s slices, each next to a probe of the machine


# -- the fake agents (one process hosts many hosts) -------------------------------------


@dataclass
class Primary:
    domain: str
    host_id: str
    generation: int
    sent: float = 0.0  # perf_counter of the last request
    epoch: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class FakeAgent(colo_pb2_grpc.AgentServicer):  # type: ignore[misc]
    """Acks every command at once; remembers which domains it is primary of."""

    def __init__(self) -> None:
        self.primaries: dict[str, Primary] = {}
        self.latencies: list[float] = []  # request sent -> Checkpoint received, seconds
        self.checkpoints = 0

    async def PrepareSecondary(self, request: Any, context: Any) -> colo_pb2.PrepareSecondaryResponse:  # noqa: N802
        return colo_pb2.PrepareSecondaryResponse(
            domain=request.domain,
            generation=request.generation,
            epoch=request.epoch,
            data_address="127.0.0.1:9",
        )

    async def StartPrimary(self, request: Any, context: Any) -> colo_pb2.StartPrimaryResponse:  # noqa: N802
        host = request.domain.split(".", 1)[1]  # vmNNNNN.<primary host>
        self.primaries[request.domain] = Primary(request.domain, host, request.generation)
        return colo_pb2.StartPrimaryResponse(
            domain=request.domain, generation=request.generation, epoch=request.epoch
        )

    async def Checkpoint(self, request: Any, context: Any) -> colo_pb2.AgentCheckpointResponse:  # noqa: N802
        now = time.perf_counter()
        self.checkpoints += 1
        p = self.primaries.get(request.domain)
        if p is not None and p.sent and request.trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST:
            self.latencies.append(now - p.sent)
            p.sent = 0.0
            p.epoch = request.epoch
            p.arrived.set()
        return colo_pb2.AgentCheckpointResponse(
            domain=request.domain, generation=request.generation, epoch=request.epoch
        )

    async def Release(self, request: Any, context: Any) -> colo_pb2.ReleaseResponse:  # noqa: N802
        return colo_pb2.ReleaseResponse(domain=request.domain, generation=request.generation)


async def _fake_main(conn: Connection, coordinator: str, hosts: list[str], labels: dict[str, str]) -> None:
    agent = FakeAgent()
    srv = grpc.aio.server(options=serving.SERVER_OPTIONS)
    colo_pb2_grpc.add_AgentServicer_to_server(agent, srv)
    address = serving.bind(srv, "127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(coordinator, options=serving.CHANNEL_OPTIONS)
    stub = colo_pb2_grpc.CoordinatorStub(channel)
    incarnations = {h: uuid.uuid4().hex for h in hosts}
    interval = 1.0
    for h in hosts:
        reply = await stub.RegisterAgent(
            colo_pb2.RegisterAgentRequest(
                host_id=h,
                incarnation=incarnations[h],
                grpc_address=address,
                data_address="127.0.0.1:9",
                service_host="127.0.0.1",
                labels={**labels, "rack": h},
                backends=["sim"],
                version=__version__,
            ),
            timeout=RPC_TIMEOUT,
        )
        interval = reply.heartbeat_interval.ToNanoseconds() / 1e9

    async def heartbeats() -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.gather(
                *(
                    stub.Heartbeat(
                        colo_pb2.HeartbeatRequest(host_id=h, incarnation=incarnations[h]), timeout=RPC_TIMEOUT
                    )
                    for h in hosts
                ),
                return_exceptions=True,
            )

    beat = asyncio.create_task(heartbeats())
    loop = asyncio.get_running_loop()

    def request(p: Primary) -> Any:
        p.sent = time.perf_counter()
        p.arrived.clear()
        return stub.RequestCheckpoint(
            colo_pb2.RequestCheckpointRequest(
                domain=p.domain,
                generation=p.generation,
                epoch=p.epoch,
                host_id=p.host_id,
                reason=colo_pb2.CHECKPOINT_REQUEST_REASON_OUTPUT_MISMATCH,
            ),
            timeout=RPC_TIMEOUT,
        )

    async def single(domain: str, count: int) -> list[float]:
        p = agent.primaries[domain]
        agent.latencies.clear()
        for _ in range(count):
            await request(p)
            await asyncio.wait_for(p.arrived.wait(), RPC_TIMEOUT)
            await asyncio.sleep(SINGLE_GAP)
        return list(agent.latencies)

    async def load(seconds: float, rate: float) -> dict[str, Any]:
        agent.latencies.clear()
        start_checkpoints = agent.checkpoints
        cpu0 = time.process_time()
        period = 1.0 / rate
        prims = list(agent.primaries.values())
        errors = 0

        async def one(p: Primary, phase: float) -> None:
            nonlocal errors
            t = loop.time() + phase
            end = loop.time() + seconds
            while t < end:
                await asyncio.sleep(max(0.0, t - loop.time()))
                try:
                    await request(p)
                except grpc.aio.AioRpcError:
                    errors += 1
                t += period

        n = max(len(prims), 1)
        await asyncio.gather(*(one(p, period * i / n) for i, p in enumerate(prims)))
        await asyncio.sleep(LOAD_TAIL)  # the last checkpoints arrive
        return {
            "latencies": list(agent.latencies),
            "checkpoints": agent.checkpoints - start_checkpoints,
            "errors": errors,
            "primaries": len(prims),
            "cpu_s": time.process_time() - cpu0,
        }

    conn.send(("ready", address))
    while True:
        cmd, *params = await loop.run_in_executor(None, conn.recv)
        if cmd == "single":
            conn.send(await single(*params))
        elif cmd == "load":
            conn.send(await load(*params))
        elif cmd == "primaries":
            conn.send(sorted(agent.primaries))
        else:
            break
    beat.cancel()
    await srv.stop(None)
    await channel.close(None)


def _fake_process(conn: Connection, coordinator: str, hosts: list[str], labels: dict[str, str]) -> None:
    asyncio.run(_fake_main(conn, coordinator, hosts, labels))


# -- the bench ---------------------------------------------------------------------------


@dataclass
class _Round:
    single_issue: list[float]  # seconds
    single_e2e: list[float]
    load_issue: list[float]
    load_e2e: list[float]
    checkpoints: int
    errors: int
    elapsed: float  # the load slice, seconds
    coordinator_cpu: float  # seconds of this process's CPU during the load slice
    fake_cpu: float  # seconds, all fake-agent processes together


@dataclass
class Results:
    pairs: int
    rate_per_pair: float
    rounds: int
    duration_s: float
    checkpoints_per_s: float
    target_per_s: float
    achieved_per_s: harness.Spread  # each round's checkpoints/s
    request_errors: int
    load_issue_ms: harness.Tail  # pooled over rounds
    load_e2e_ms: harness.Tail
    single_issue_ms: harness.Tail
    single_e2e_ms: harness.Tail
    load_issue_p50_ms: float
    load_issue_p99_ms: float | None  # None: fewer than 1,000 samples
    load_e2e_p50_ms: float
    load_e2e_p99_ms: float | None
    single_samples: int
    single_issue_p50_ms: float
    single_issue_p99_ms: float | None
    single_e2e_p50_ms: float
    single_e2e_p99_ms: float | None
    protect_s: float
    coordinator_cpu_pct: float  # CPU of the coordinator's process during the load, % of one core
    fake_agent_cpu_pct: float  # the same, per fake-agent process
    noise: harness.Noise
    verdicts: dict[str, harness.Verdict]
    goals: dict[str, bool | None]  # None: this run cannot tell (harness.Verdict)
    warnings: list[str]


GOALS_MS = {  # name: (which samples, which percentile, at most ms)
    "load_p99_le_50ms": ("load_issue", "p99", 50.0),
    "single_p50_le_1ms": ("single_issue", "p50", 1.0),
    "single_p99_le_5ms": ("single_issue", "p99", 5.0),
}


def _verdicts(
    samples: dict[str, list[float]], noise: harness.Noise
) -> tuple[dict[str, harness.Verdict], list[str]]:
    """Each latency goal on the percentile it names (harness.judge_tail:
    with too few samples for it, on what they can say)."""
    verdicts: dict[str, harness.Verdict] = {}
    warnings: list[str] = []
    for name, (which, wanted, goal) in GOALS_MS.items():
        values = samples[which]
        if not values:
            continue
        verdicts[name] = harness.judge_tail(wanted, values, goal)
        warnings += harness.verdict_warning(name, verdicts[name], fmt=".3f")
    return verdicts, harness.noise_warning("control", noise) + warnings


async def _run(
    *, pairs: int, rate: float, seconds: float, hosts: int, procs: int, single: int, rounds: int
) -> Results:
    workdir = Path(tempfile.mkdtemp(prefix="colo-bench-control-"))
    # Heartbeats every second, no timer checkpoints and no armed epochs (the
    # fake agents ack at once): the control path measured is the request path
    # alone (RequestCheckpoint -> Agent.Checkpoint).
    settings = Settings(
        heartbeat_interval=1.0,
        heartbeat_timeout=10.0,
        checkpoint_interval=3600.0,
        flush_interval=0.5,
        arm_checkpoints=False,
    )
    running = await coordinator_server.start(str(workdir / "colo.db"), "127.0.0.1:0", settings)
    core = running.core
    ctx = mp.get_context("spawn")
    names = [f"fake-{i:03d}" for i in range(hosts)]
    workers: list[tuple[Any, Connection]] = []
    loop = asyncio.get_running_loop()
    try:
        for i in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_fake_process,
                args=(child, running.address, names[i::procs], {"zone": f"z{i}"}),
                daemon=True,
            )
            proc.start()
            workers.append((proc, parent))
        for _, conn in workers:
            msg = await loop.run_in_executor(None, conn.recv)
            assert msg[0] == "ready", msg
        channel = grpc.aio.insecure_channel(running.address)
        stub = colo_pb2_grpc.CoordinatorStub(channel)
        t0 = time.perf_counter()
        for i in range(pairs):
            primary = names[i % hosts]
            spec = colo_pb2.DomainSpec(
                domain=f"vm{i:05d}.{primary}",
                sim=colo_pb2.SimDomainSpec(pages=1024),
                checkpoint_interval=duration(3600.0),
            )
            await stub.ProtectDomain(
                colo_pb2.ProtectDomainRequest(spec=spec, primary_host=primary), timeout=RPC_TIMEOUT
            )
        while sum(1 for r in core.machine.pairs.values() if r.state == colo_pb2.PAIR_STATE_PROTECTED) < pairs:
            await asyncio.sleep(0.05)
        protect_s = time.perf_counter() - t0
        await channel.close(None)

        _, conn0 = workers[0]
        conn0.send(("primaries",))
        first = (await loop.run_in_executor(None, conn0.recv))[0]
        per_single = max(1, math.ceil(single / rounds))

        async def phase() -> _Round:
            # Single pair: one request at a time against an otherwise idle coordinator.
            core.driver.samples = []
            conn0.send(("single", first, per_single))
            single_e2e = await loop.run_in_executor(None, conn0.recv)
            single_issue = core.driver.samples
            # Load: every pair at `rate`.
            core.driver.samples = []
            for _, conn in workers:
                conn.send(("load", seconds / rounds, rate))
            t1, cpu1 = time.perf_counter(), time.process_time()
            loads = [await loop.run_in_executor(None, conn.recv) for _, conn in workers]
            elapsed = time.perf_counter() - t1 - LOAD_TAIL
            load_issue = core.driver.samples
            core.driver.samples = None
            return _Round(
                single_issue=single_issue,
                single_e2e=single_e2e,
                load_issue=load_issue,
                load_e2e=[x for r in loads for x in r["latencies"]],
                checkpoints=sum(r["checkpoints"] for r in loads),
                errors=sum(r["errors"] for r in loads),
                elapsed=elapsed,
                coordinator_cpu=time.process_time() - cpu1,
                fake_cpu=sum(r["cpu_s"] for r in loads),
            )

        probe = Probe()
        try:
            # In a thread: the coordinator in this loop keeps serving meanwhile.
            runs = await harness.interleave_async(rounds, lambda: asyncio.to_thread(probe.gbps), phase)
        finally:
            probe.close()
        for _, conn in workers:
            conn.send(("stop",))
    finally:
        for proc, _ in workers:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        await running.stop(0.5)
    phases = [r.subject for r in runs]
    elapsed = sum(p.elapsed for p in phases)
    ms = 1e3
    samples = {
        which: [x * ms for p in phases for x in getattr(p, which)]
        for which in ("single_issue", "single_e2e", "load_issue", "load_e2e")
    }
    tails = {which: harness.Tail.of(v or [float("nan")]) for which, v in samples.items()}
    noise = harness.Noise.of("loopback probe", [r.baseline for r in runs])
    verdicts, warnings = _verdicts(samples, noise)
    checkpoints_per_s = sum(p.checkpoints for p in phases) / elapsed
    goals = {name: v.met for name, v in verdicts.items()}
    if "load_p99_le_50ms" in goals and checkpoints_per_s < 0.95 * pairs * rate:
        goals["load_p99_le_50ms"] = False  # a latency goal met by not keeping up is not met
    return Results(
        pairs=pairs,
        rate_per_pair=rate,
        rounds=rounds,
        duration_s=round(elapsed, 2),
        checkpoints_per_s=round(checkpoints_per_s, 1),
        target_per_s=pairs * rate,
        achieved_per_s=harness.Spread.of([p.checkpoints / p.elapsed for p in phases]),
        request_errors=sum(p.errors for p in phases),
        load_issue_ms=tails["load_issue"],
        load_e2e_ms=tails["load_e2e"],
        single_issue_ms=tails["single_issue"],
        single_e2e_ms=tails["single_e2e"],
        load_issue_p50_ms=tails["load_issue"].p50,
        load_issue_p99_ms=tails["load_issue"].p99,
        load_e2e_p50_ms=tails["load_e2e"].p50,
        load_e2e_p99_ms=tails["load_e2e"].p99,
        single_samples=len(samples["single_issue"]),
        single_issue_p50_ms=tails["single_issue"].p50,
        single_issue_p99_ms=tails["single_issue"].p99,
        single_e2e_p50_ms=tails["single_e2e"].p50,
        single_e2e_p99_ms=tails["single_e2e"].p99,
        protect_s=round(protect_s, 2),
        coordinator_cpu_pct=round(sum(p.coordinator_cpu for p in phases) / elapsed * 100, 1),
        fake_agent_cpu_pct=round(sum(p.fake_cpu for p in phases) / elapsed / procs * 100, 1),
        noise=noise,
        verdicts=verdicts,
        goals=goals,
        warnings=warnings,
    )


def run(
    *,
    pairs: int = 1000,
    rate: float = 1.0,
    seconds: float = 30.0,
    hosts: int = 20,
    procs: int = 2,
    single: int = 2000,
    rounds: int = ROUNDS,
) -> Results:
    return asyncio.run(
        _run(pairs=pairs, rate=rate, seconds=seconds, hosts=hosts, procs=procs, single=single, rounds=rounds)
    )


def _round_floats(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _round_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round_floats(v) for v in value]
    return value


def as_json(res: Results) -> dict[str, Any]:
    out: dict[str, Any] = _round_floats(asdict(res))
    return out


def render(res: Results) -> str:
    def ok(name: str) -> str:
        met = res.goals.get(name)
        return "? (see WARNING)" if met is None else "ok" if met else "MISSED"

    def tail(t: harness.Tail) -> str:
        return t.text("ms", ".3f")

    a = res.achieved_per_s
    return "\n".join(
        [
            f"colo bench control: {res.pairs} pairs at {res.rate_per_pair:g} checkpoint/s each, "
            f"{res.rounds} rounds, {res.duration_s} s of load (protected in {res.protect_s} s)",
            f"  achieved           {res.checkpoints_per_s:.1f} checkpoints/s (target {res.target_per_s:g}; "
            f"rounds {a.range('.0f')}), {res.request_errors} request errors",
            f"  request -> issued  {tail(res.load_issue_ms)}",
            f"                     (goal p99 <= 50 ms and >= 95 % of the target: {ok('load_p99_le_50ms')})",
            f"  end to end         {tail(res.load_e2e_ms)}",
            "                     (RequestCheckpoint sent -> Agent.Checkpoint received)",
            f"  CPU                coordinator {res.coordinator_cpu_pct:.0f} % of a core, each fake-agent "
            f"process {res.fake_agent_cpu_pct:.0f} %",
            f"single pair, {res.single_samples} requests one at a time:",
            f"  request -> issued  {tail(res.single_issue_ms)}",
            f"                     (goals p50 <= 1 ms: {ok('single_p50_le_1ms')}, "
            f"p99 <= 5 ms: {ok('single_p99_le_5ms')})",
            f"  end to end         {tail(res.single_e2e_ms)}",
            f"{res.noise.text()} (a fixed 64 MiB loopback transfer between phases)",
            *harness.render_warnings(res.warnings),
        ]
    )


def register(bench_sub: Any) -> None:
    """Adds `colo bench control`."""
    p = bench_sub.add_parser("control", help="the coordinator alone against fake agents that ack at once")
    p.add_argument("--pairs", type=int, default=1000, help="pairs (default %(default)s)")
    p.add_argument("--rate", type=float, default=1.0, help="checkpoint requests per second per pair")
    p.add_argument("--duration", type=float, default=30.0, metavar="SECONDS", help="load phase length")
    p.add_argument("--hosts", type=int, default=20, help="fake hosts (default %(default)s)")
    p.add_argument("--procs", type=int, default=2, help="processes hosting the fake agents")
    p.add_argument("--single", type=int, default=2000, help="single-pair requests (default %(default)s)")
    p.add_argument(
        "--rounds", type=int, default=ROUNDS, help="rounds the two phases are cut into (default %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object of the figures")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    import json

    res = run(
        pairs=args.pairs,
        rate=args.rate,
        seconds=args.duration,
        hosts=args.hosts,
        procs=args.procs,
        single=args.single,
        rounds=args.rounds,
    )
    print(json.dumps(as_json(res)) if args.json else render(res))
    return 0
