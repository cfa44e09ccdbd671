"""`colo demo`: a coordinator and three agents on loopback (sim backend)
protect a domain whose guest dirties memory, with a live view; part way the
primary's host is killed, and the view shows the failover and the automatic
re-protection on the third host."""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from colo_plane import promtext
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.rpc import duration
from colo_plane.tools import loadgen
from colo_plane.tools.localcluster import LocalCluster, Process

HOSTS = (("host-a", "zone-a"), ("host-b", "zone-b"), ("host-c", "zone-c"))
CHECKPOINT_FLIP = {colo_pb2.PAIR_STATE_PROTECTED, colo_pb2.PAIR_STATE_CHECKPOINTING}
DOMAIN = "web-1"


@dataclass
class Timeline:
    lines: list[str] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # first time each milestone was seen
    lock: threading.Lock = field(default_factory=threading.Lock)
    t0: float = field(default_factory=time.monotonic)

    def add(self, text: str) -> None:
        with self.lock:
            self.lines.append(f"{time.monotonic() - self.t0:6.2f}s  {text}")

    def mark(self, name: str) -> None:
        with self.lock:
            self.marks.setdefault(name, time.monotonic())

    def tail(self, n: int) -> list[str]:
        with self.lock:
            return self.lines[-n:]


def _state(value: int) -> str:
    return colo_pb2.PairState.Name(value).removeprefix("PAIR_STATE_")


def _watch(stub: colo_pb2_grpc.CoordinatorStub, timeline: Timeline, stop: threading.Event) -> None:
    """Follows WatchEvents, keeping the events a person wants to see."""
    interesting = {
        colo_pb2.EVENT_KIND_STATE_CHANGED,
        colo_pb2.EVENT_KIND_SECONDARY_PLACED,
        colo_pb2.EVENT_KIND_FAILOVER_STARTED,
        colo_pb2.EVENT_KIND_FAILOVER_COMPLETED,
        colo_pb2.EVENT_KIND_AGENT_LOST,
        colo_pb2.EVENT_KIND_VERIFY_FAILED,
        colo_pb2.EVENT_KIND_PAIR_ERROR,
    }
    with contextlib.suppress(grpc.RpcError):
        for reply in stub.WatchEvents(colo_pb2.WatchEventsRequest()):
            if stop.is_set():
                return
            ev = reply.event
            if ev.kind == colo_pb2.EVENT_KIND_FAILOVER_COMPLETED:
                timeline.mark("promoted")
            if (
                "promoted" in timeline.marks
                and ev.to_state == colo_pb2.PAIR_STATE_PROTECTED
                and (ev.from_state == colo_pb2.PAIR_STATE_SYNCING)
            ):
                timeline.mark("reprotected")
            if ev.kind not in interesting or {ev.from_state, ev.to_state} == CHECKPOINT_FLIP:
                continue
            kind = colo_pb2.EventKind.Name(ev.kind).removeprefix("EVENT_KIND_").lower()
            what = (
                f"{_state(ev.from_state)} -> {_state(ev.to_state)}"
                if ev.kind == colo_pb2.EVENT_KIND_STATE_CHANGED
                else (ev.message or ev.host_id)
            )
            timeline.add(f"{kind:<20} gen {ev.generation:<3} {what}")


def _figures(agents: dict[str, Process]) -> dict[str, float]:
    texts = []
    for agent in agents.values():
        if agent.alive():
            with contextlib.suppress(OSError):
                texts.append(promtext.scrape(agent.info["metrics"]))
    return {
        "p50": promtext.quantile(texts, "colo_checkpoint_pause_seconds", 0.5, role="primary") * 1e3,
        "p99": promtext.quantile(texts, "colo_checkpoint_pause_seconds", 0.99, role="primary") * 1e3,
        "mb": promtext.total(texts, "colo_stream_sent_bytes_total") / 1e6,
        "verify_failed": promtext.total(texts, "colo_verify_failures_total"),
        "verified": promtext.total(texts, "colo_verify_checks_total"),
    }


@dataclass
class Load:
    """loadgen running in a thread of its own, watched through its ledger."""

    coordinator: str
    clients: int
    ledger: loadgen.Ledger = field(default_factory=loadgen.Ledger)
    report: loadgen.Report | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _last: tuple[float, int] = (0.0, 0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import asyncio

        async def go() -> loadgen.Report:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            threading.Thread(
                target=lambda: (self._stop.wait(), loop.call_soon_threadsafe(stop.set)), daemon=True
            ).start()
            resolve = loadgen.resolver(self.coordinator, DOMAIN, None)
            return await loadgen.run(
                resolve, clients=self.clients, seconds=1e9, stop=stop, ledger=self.ledger
            )

        self.report = asyncio.run(go())

    def rate(self) -> float:
        now, ops = time.monotonic(), self.ledger.ops
        last_t, last_ops = self._last
        self._last = (now, ops)
        return (ops - last_ops) / (now - last_t) if last_t else 0.0

    def finish(self) -> loadgen.Report | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        return self.report


def _render(
    pair: colo_pb2.Pair,
    fig: dict[str, float],
    *,
    load: Load,
    timeline: Timeline,
    elapsed: float,
    note: str,
) -> str:
    counts = pair.checkpoint_counts

    def ms(v: float) -> str:
        return "-" if math.isnan(v) else f"<= {v:.1f} ms"

    rows = [
        f"colo-plane demo  t={elapsed:5.1f}s  {note}",
        "",
        f"  pair        {pair.domain}   state {_state(pair.state):<14} generation {pair.generation}  "
        f"epoch {pair.epoch}",
        f"  primary     {pair.primary_host or '-':<10} secondary {pair.secondary_host or '-':<10}",
        f"  checkpoints timer {counts.timer}  divergence {counts.request}  manual {counts.manual}  "
        f"first boot {counts.first_boot}  failed {counts.failed}",
        f"  clients     {load.clients} loadgen clients  {load.rate():.0f} ops/s  acknowledged writes "
        f"{len(load.ledger.acknowledged)}  reconnects {load.ledger.reconnects}",
        f"  pause       p50 {ms(fig['p50'])}   p99 {ms(fig['p99'])}   (primary suspended -> resumed)",
        f"  sent        {fig['mb']:.1f} MB   verified {int(fig['verified'])}   verify failures "
        f"{int(fig['verify_failed'])}",
        "",
        "  events:",
        *(f"    {line}" for line in timeline.tail(10)),
    ]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="colo-demo-"))
    cluster = LocalCluster(workdir)
    stop = threading.Event()
    tty = sys.stdout.isatty()
    load: Load | None = None
    try:
        coordinator = cluster.start_coordinator()
        agents = {h: cluster.start_agent(h, coordinator.grpc, "--label", f"zone={z}") for h, z in HOSTS}
        channel = grpc.insecure_channel(coordinator.grpc)
        stub = colo_pb2_grpc.CoordinatorStub(channel)
        deadline = time.monotonic() + 15
        while len(stub.ListAgents(colo_pb2.ListAgentsRequest(alive_only=True), timeout=5).agents) < len(
            HOSTS
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not register with the coordinator")
            time.sleep(0.1)
        timeline = Timeline()
        threading.Thread(target=_watch, args=(stub, timeline, stop), daemon=True).start()
        spec = colo_pb2.DomainSpec(
            domain=DOMAIN,
            verify=args.verify,
            checkpoint_interval=duration(args.interval),
            sim=colo_pb2.SimDomainSpec(
                pages=args.pages,
                dirty_rate=args.dirty_rate,
                seed=7,
                pattern=colo_pb2.SIM_PATTERN_HOT_SET,
                hot_pages=args.pages // 8,
                hot_percent=80,
                divergence_probability=args.divergence,
                # a key-value store of ~520k slots: a run's ~130k writes fit with room to spare
                service_pages=args.pages // 2,
            ),
        )
        stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a", wait=True), timeout=60
        )
        timeline.add("protected: first boot done; clients start")
        load = Load(coordinator.grpc, args.clients)
        load.start()
        start, killed_at, promoted_at, reprotected_at = time.monotonic(), 0.0, 0.0, 0.0
        victim = ""
        while (elapsed := time.monotonic() - start) < args.seconds:
            pair = stub.GetPair(colo_pb2.GetPairRequest(domain=DOMAIN), timeout=5).pair
            if not killed_at and elapsed >= args.kill_after:
                victim = pair.primary_host
                agents[victim].kill()
                killed_at = time.monotonic()
                timeline.add(f"kill -9 {victim} (the primary)")
            promoted_at = timeline.marks.get("promoted", 0.0)
            reprotected_at = timeline.marks.get("reprotected", 0.0)
            note = "" if not killed_at else f"(killed {victim} at t={killed_at - start:.1f}s)"
            view = _render(pair, _figures(agents), load=load, timeline=timeline, elapsed=elapsed, note=note)
            print(("\x1b[H\x1b[2J" + view) if tty else view + "\n", flush=True)
            time.sleep(0.5 if tty else 2.0)
        print("\nstopping the clients and reading every acknowledged write back ...", flush=True)
        report = load.finish()
        pair = stub.GetPair(colo_pb2.GetPairRequest(domain=DOMAIN), timeout=5).pair
        fig = _figures(agents)
        print("\nsummary")
        print(
            f"  pair {DOMAIN}: {_state(pair.state)} on {pair.primary_host} -> {pair.secondary_host}, "
            f"generation {pair.generation}, epoch {pair.epoch}"
        )
        if promoted_at:
            print(f"  failover: secondary promoted {promoted_at - killed_at:.2f} s after kill -9 of {victim}")
        if reprotected_at:
            print(f"  re-protected {reprotected_at - killed_at:.2f} s after the kill")
        if args.verify:
            print(
                f"  checkpoints verified {int(fig['verified'])}, verify failures {int(fig['verify_failed'])}"
            )
        clean = False
        if report is not None:
            print(
                f"  clients: {report.ops} ops, {report.acknowledged_writes} acknowledged writes, "
                f"{report.reconnects} reconnects after the failover"
            )
            print(f"  acknowledged writes lost = {report.acknowledged_writes_lost}")
            print(f"  reads of values never written = {report.reads_of_values_never_written}")
            for error in report.errors[:5]:
                print(f"  client error: {error}")
            clean = (
                report.acknowledged_writes_lost == 0
                and report.reads_of_values_never_written == 0
                and not report.errors
            )
        ok = bool(promoted_at and reprotected_at and clean and fig["verify_failed"] == 0)
        print("  result: " + ("OK" if ok else "NOT OK (see the logs in " + str(workdir) + ")"))
        channel.close()
        return 0 if ok else 1
    finally:
        stop.set()
        if load is not None:
            load.finish()
        cluster.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the live view runs")
    parser.add_argument("--kill-after", type=float, default=10.0, help="when to kill -9 the primary's agent")
    parser.add_argument("--pages", type=int, default=65536, help="guest memory in pages (default 256 MiB)")
    parser.add_argument("--dirty-rate", type=int, default=20_000, help="pages the guest dirties per second")
    parser.add_argument("--interval", type=float, default=0.5, help="checkpoint interval in seconds")
    parser.add_argument("--divergence", type=float, default=0.02, help="share of guest replies that diverge")
    parser.add_argument("--clients", type=int, default=8, help="loadgen clients")
    parser.add_argument(
        "--verify", action="store_true", help="verify mode (hash both sides every checkpoint)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
