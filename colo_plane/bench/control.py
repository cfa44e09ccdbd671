"""`colo bench control`: the coordinator's control path alone.  A real
coordinator (in this process, real gRPC, real SQLite) runs against fake
agents in a few other processes: real gRPC Agent servers that each host
many fake hosts and ack every command at once, and whose primaries send
RequestCheckpoint at a set rate.  Measures request -> issued latency
inside the coordinator and request -> Agent.Checkpoint received end to end."""

from __future__ import annotations

import asyncio
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

RPC_TIMEOUT = 5.0
LOAD_TAIL = 0.2
SINGLE_GAP = 0.002  # between single-pair requests: each one meets an idle coordinator


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


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Results:
    pairs: int
    rate_per_pair: float
    duration_s: float
    checkpoints_per_s: float
    target_per_s: float
    request_errors: int
    load_issue_p50_ms: float
    load_issue_p99_ms: float
    load_e2e_p50_ms: float
    load_e2e_p99_ms: float
    single_samples: int
    single_issue_p50_ms: float
    single_issue_p99_ms: float
    single_e2e_p50_ms: float
    single_e2e_p99_ms: float
    protect_s: float
    coordinator_cpu_pct: float  # CPU of the coordinator's process during the load, % of one core
    fake_agent_cpu_pct: float  # the same, per fake-agent process
    goals: dict[str, bool]


async def _run(*, pairs: int, rate: float, seconds: float, hosts: int, procs: int, single: int) -> Results:
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

        # Single pair: one request at a time against an otherwise idle coordinator.
        core.driver.samples = []
        _, conn0 = workers[0]
        conn0.send(("primaries",))
        first = (await loop.run_in_executor(None, conn0.recv))[0]
        conn0.send(("single", first, single))
        single_e2e = await loop.run_in_executor(None, conn0.recv)
        single_issue = core.driver.samples
        # Load: every pair at `rate`.
        core.driver.samples = []
        for _, conn in workers:
            conn.send(("load", seconds, rate))
        t1, cpu1 = time.perf_counter(), time.process_time()
        loads = [await loop.run_in_executor(None, conn.recv) for _, conn in workers]
        elapsed = time.perf_counter() - t1 - LOAD_TAIL
        coordinator_cpu = (time.process_time() - cpu1) / elapsed
        fake_cpu = sum(r["cpu_s"] for r in loads) / elapsed / len(loads)
        load_issue = core.driver.samples
        core.driver.samples = None
        load_e2e = [x for r in loads for x in r["latencies"]]
        checkpoints = sum(r["checkpoints"] for r in loads)
        errors = sum(r["errors"] for r in loads)
        for _, conn in workers:
            conn.send(("stop",))
    finally:
        for proc, _ in workers:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        await running.stop(0.5)
    ms = 1e3
    res = Results(
        pairs=pairs,
        rate_per_pair=rate,
        duration_s=round(elapsed, 2),
        checkpoints_per_s=round(checkpoints / elapsed, 1),
        target_per_s=pairs * rate,
        request_errors=errors,
        load_issue_p50_ms=_pct(load_issue, 0.5) * ms,
        load_issue_p99_ms=_pct(load_issue, 0.99) * ms,
        load_e2e_p50_ms=_pct(load_e2e, 0.5) * ms,
        load_e2e_p99_ms=_pct(load_e2e, 0.99) * ms,
        single_samples=len(single_issue),
        single_issue_p50_ms=_pct(single_issue, 0.5) * ms,
        single_issue_p99_ms=_pct(single_issue, 0.99) * ms,
        single_e2e_p50_ms=_pct(single_e2e, 0.5) * ms,
        single_e2e_p99_ms=_pct(single_e2e, 0.99) * ms,
        protect_s=round(protect_s, 2),
        coordinator_cpu_pct=round(coordinator_cpu * 100, 1),
        fake_agent_cpu_pct=round(fake_cpu * 100, 1),
        goals={},
    )
    res.goals = {
        "load_p99_le_50ms": res.load_issue_p99_ms <= 50.0
        and res.checkpoints_per_s >= 0.95 * res.target_per_s,
        "single_p50_le_1ms": res.single_issue_p50_ms <= 1.0,
        "single_p99_le_5ms": res.single_issue_p99_ms <= 5.0,
    }
    return res


def run(
    *,
    pairs: int = 1000,
    rate: float = 1.0,
    seconds: float = 30.0,
    hosts: int = 20,
    procs: int = 2,
    single: int = 2000,
) -> Results:
    return asyncio.run(_run(pairs=pairs, rate=rate, seconds=seconds, hosts=hosts, procs=procs, single=single))


def as_json(res: Results) -> dict[str, Any]:
    out = asdict(res)
    for k, v in out.items():
        if isinstance(v, float):
            out[k] = round(v, 3)
    return out


def render(res: Results) -> str:
    def ok(flag: bool) -> str:
        return "ok" if flag else "MISSED"

    g = res.goals
    return "\n".join(
        [
            f"colo bench control: {res.pairs} pairs at {res.rate_per_pair:g} checkpoint/s each, "
            f"{res.duration_s} s elapsed "
            f"(protected in {res.protect_s} s)",
            f"  achieved           {res.checkpoints_per_s:.1f} checkpoints/s (target {res.target_per_s:g}), "
            f"{res.request_errors} request errors",
            f"  request -> issued  p50 {res.load_issue_p50_ms:.3f} ms  p99 {res.load_issue_p99_ms:.3f} ms  "
            f"(goal p99 <= 50 ms: {ok(g['load_p99_le_50ms'])})",
            f"  end to end         p50 {res.load_e2e_p50_ms:.3f} ms  p99 {res.load_e2e_p99_ms:.3f} ms  "
            "(RequestCheckpoint sent -> Agent.Checkpoint received)",
            f"  CPU                coordinator {res.coordinator_cpu_pct:.0f} % of a core, each fake-agent "
            f"process {res.fake_agent_cpu_pct:.0f} %",
            f"single pair, {res.single_samples} requests one at a time:",
            f"  request -> issued  p50 {res.single_issue_p50_ms:.3f} ms  "
            f"p99 {res.single_issue_p99_ms:.3f} ms  "
            f"(goals p50 <= 1 ms: {ok(g['single_p50_le_1ms'])}, p99 <= 5 ms: {ok(g['single_p99_le_5ms'])})",
            f"  end to end         p50 {res.single_e2e_p50_ms:.3f} ms  p99 {res.single_e2e_p99_ms:.3f} ms",
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
    )
    print(json.dumps(as_json(res)) if args.json else render(res))
    return 0
