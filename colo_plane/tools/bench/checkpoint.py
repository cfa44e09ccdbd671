"""`colo bench checkpoint`: the primary's pause time through the real
protocol code (PrimaryLink and SecondaryLoop over loopback TCP), with the
dirty set forced to an exact size, against the ideal pause of moving the
same bytes over raw TCP.  Every checkpoint is paired with a raw transfer of
its bytes, back to back, alternating which goes first (harness), so a
neighbour's time slice lands on the raw transfers as often as on the
pauses; the tail (p99) of the pauses is judged against the same tail of
the raw transfers (harness.paired_tail), every pair of the run pooled."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import socket
import statistics
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

from colo_plane import native
from colo_plane.agent.primary import PrimaryLink
from colo_plane.agent.secondary import SecondaryLoop
from colo_plane.agent.syncpoints import SyncPoint
from colo_plane.tools.bench import harness
from colo_plane.tools.bench.loopback import RawPeer, tcp_pair
from colo_plane.tools.bench.stream import RECORD_BYTES, stream_bytes

GOAL_FACTOR = 1.5
GOAL_SLACK_MS = 2.0
# Rounds: the units the bootstrap resamples, and the raw CV (the machine's
# noise) across 15 medians of a round each.
ROUNDS = 15
# Bytes a size's checkpoints may move when no count is asked for: enough
# for a pooled p99 (1,000 samples) up to 10,000 pages (41 MB each), a p90
# above (100,000 pages: 105 checkpoints); each has a raw transfer beside
# it, 80-90 s in all.
BUDGET_BYTES = 48e9
WARMUP_CHECKPOINTS = 3


@dataclass(frozen=True)
class CaseResult:
    dirty_pages: int
    checkpoints: int  # in all, over the rounds
    rounds: int
    bytes_per_checkpoint: int
    pause_ms: harness.Tail  # every pause of the run, pooled
    pause_p50_ms: float
    pause_p99_ms: float | None  # only with >= 1,000 checkpoints
    tail: str  # the percentile judged: p99, or p90 (or the max) with fewer checkpoints
    tail_ms: float
    tail_interval_ms: tuple[float, float]  # its 95 % interval (harness.tail_interval)
    round_p50_ms: harness.Spread  # each round's median pause, across rounds
    raw_gbps: harness.Spread  # each round's raw TCP rate (bytes / its median raw transfer)
    raw_ms: harness.Tail  # every raw transfer of the run, pooled (one per checkpoint)
    p50_over_raw: harness.Spread  # each round's median pause / its median raw transfer
    ideal_ms: float  # the same percentile (tail) of the raw transfers
    ideal_interval_ms: tuple[float, float]  # its 95 % interval
    tail_over_ideal: float
    tail_over_ideal_interval: tuple[float, float]  # its 95 % bootstrap interval (whole rounds)
    goal_ms: float  # 1.5 x ideal + 2 ms
    goal_over_ideal: float
    noise: harness.Noise
    verdict: harness.Verdict  # tail / goal_ms against 1 (harness.paired_tail)
    met: bool | None  # None: this run cannot tell (the bootstrap interval straddles the goal)
    warnings: list[str]


def default_checkpoints(dirty: int, rounds: int) -> int:
    """Checkpoints for a size: enough for a pooled p99, or as many as the
    byte budget allows; a multiple of rounds either way."""
    need = math.ceil(harness.TAIL_MIN_SAMPLES["p99"] / rounds) * rounds
    affordable = int(BUDGET_BYTES // stream_bytes(dirty)) // rounds * rounds
    return max(rounds * 3, min(need, affordable))


def _ignore(_: SyncPoint) -> None:
    pass


def _secondary(sock: socket.socket, domain_pages: int, result: Connection) -> None:
    """The secondary in a process of its own, as on its own host (no GIL shared
    with the primary): runs until the stream ends, then sends its hash."""
    with native.Domain.sim(pages=domain_pages, seed=2) as secondary:
        loop = SecondaryLoop(
            domain="bench", generation=1, dom=secondary, sock=sock, verify=False, sink=_ignore
        )
        loop.run()
        secondary.pause()
        result.send(secondary.hash())


def run_case(dirty: int, checkpoints: int, rounds: int, domain_pages: int) -> CaseResult:
    per_round = math.ceil(checkpoints / rounds)
    primary = native.Domain.sim(pages=domain_pages, seed=1)
    tx, rx = tcp_pair()
    theirs, mine = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_secondary, args=(rx, domain_pages, mine))
    child.start()
    rx.close()
    sent = 0
    epoch = 1
    try:
        link = PrimaryLink(domain="bench", generation=1, dom=primary, sock=tx, verify=False, sink=_ignore)
        link.first_boot(epoch)

        def pause() -> float:
            nonlocal epoch, sent
            epoch += 1
            primary.sim_dirty(native.Bitmap.random(domain_pages, dirty, seed=epoch))
            outcome = link.checkpoint(epoch)
            if outcome.stats.dirty_d != dirty:
                raise RuntimeError(f"bench: D has {outcome.stats.dirty_d} pages, forced {dirty}")
            sent = outcome.stats.bytes
            return outcome.stats.pause_ns / 1e6

        for _ in range(WARMUP_CHECKPOINTS):  # the secondary's first applies fault its pages in
            pause()
        # The baseline writes one checkpoint's bytes from a buffer as large
        # to a process of its own, once beside every checkpoint.
        raw = RawPeer(sent, min(sent, RECORD_BYTES), sent, rounds * per_round + 1)
        try:
            raw.seconds()  # first touch of the buffers: page faults are not noise
            pairs = harness.interleave(rounds * per_round, lambda: raw.seconds() * 1e3, pause)
        finally:
            raw.close()
        primary.pause()
        tx.shutdown(socket.SHUT_WR)  # end of stream: the secondary reports its hash
        if not theirs.poll(60) or theirs.recv() != primary.hash():
            raise RuntimeError("bench: the secondary differs from the primary")
    finally:
        # shutdown, not close alone: the forked child holds a copy of tx, and
        # on an error it must see the end of the stream, not wait 30 s for more.
        with contextlib.suppress(OSError):
            tx.shutdown(socket.SHUT_RDWR)
        tx.close()
        child.join(30)
        primary.close()
    runs = [
        [(p.baseline, p.subject) for p in pairs[i * per_round : (i + 1) * per_round]] for i in range(rounds)
    ]
    pauses = [s for r in runs for _, s in r]
    pooled = harness.Tail.of(pauses)
    # The goal is on the p99; with fewer checkpoints than a p99 needs, on the
    # p90 (of both the pauses and the raw transfers).
    tail = harness.paired_tail(runs, factor=GOAL_FACTOR, slack=GOAL_SLACK_MS)
    round_ideals = [statistics.median(b for b, _ in r) for r in runs]
    round_pauses = [statistics.median(s for _, s in r) for r in runs]
    noise = harness.Noise.of("raw TCP baseline", round_ideals)
    raw_gbps = harness.Spread.of([sent / (t / 1e3) / 1e9 for t in round_ideals])
    verdict = tail.verdict
    return CaseResult(
        dirty_pages=dirty,
        checkpoints=pooled.samples,
        rounds=rounds,
        bytes_per_checkpoint=sent,
        pause_ms=pooled,
        pause_p50_ms=pooled.p50,
        pause_p99_ms=pooled.p99,
        tail=tail.label,
        tail_ms=tail.subject,
        tail_interval_ms=tail.subject_interval,
        round_p50_ms=harness.Spread.of(round_pauses),
        raw_gbps=raw_gbps,
        raw_ms=harness.Tail.of([b for r in runs for b, _ in r]),
        p50_over_raw=harness.Spread.of([p / b for p, b in zip(round_pauses, round_ideals, strict=True)]),
        ideal_ms=tail.baseline,
        ideal_interval_ms=tail.baseline_interval,
        tail_over_ideal=tail.ratio,
        tail_over_ideal_interval=tail.ratio_interval,
        goal_ms=tail.goal,
        goal_over_ideal=tail.goal / tail.baseline,
        noise=noise,
        verdict=verdict,
        met=verdict.met,
        warnings=harness.warnings(f"{dirty} pages", noise, verdict),
    )


def run(
    *, sizes: tuple[int, ...] = (1_000, 10_000, 100_000), checkpoints: int = 0, rounds: int = ROUNDS
) -> list[CaseResult]:
    """checkpoints per size in all (0: default_checkpoints)."""
    domain_pages = max(131_072, *sizes)
    return [
        run_case(size, checkpoints or default_checkpoints(size, rounds), rounds, domain_pages)
        for size in sizes
    ]


def _ms(value: float) -> str:
    """Three or four significant figures: 2.16, 36.2, 602."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def render(results: list[CaseResult]) -> str:
    rounds = results[0].rounds if results else 0
    lines = [
        f"colo bench checkpoint: {rounds} rounds of (raw TCP, checkpoint) pairs, alternating which is first",
        f"{'dirty':>7}{'ckpts':>6}{'MB':>7}{'p50 ms':>8}{'tail ms (95% CI)':>22}{'max ms':>8}"
        f"{'ideal ms (95% CI)':>20}{'tail/ideal (95% CI)':>21}{'goal':>6}{'raw CV':>7}  met",
    ]
    for r in results:
        t = r.pause_ms
        lo, hi = r.tail_interval_ms
        ilo, ihi = r.ideal_interval_ms
        rlo, rhi = r.tail_over_ideal_interval
        tail = f"{r.tail} {_ms(r.tail_ms)} ({_ms(lo)}-{_ms(hi)})"
        ideal = f"{_ms(r.ideal_ms)} ({_ms(ilo)}-{_ms(ihi)})"
        ratio = f"{r.tail_over_ideal:.2f} ({rlo:.2f}-{rhi:.2f})"
        lines.append(
            f"{r.dirty_pages:>7}{r.checkpoints:>6}{r.bytes_per_checkpoint / 1e6:>7.1f}{_ms(t.p50):>8}"
            f"{tail:>22}{_ms(t.max):>8}{ideal:>20}{ratio:>21}{r.goal_over_ideal:>6.2f}"
            f"{r.noise.cv:>7.0%}  {r.verdict.word()}"
        )
    lines.append(
        "pause = primary suspended to resumed; each checkpoint paired with a raw TCP transfer of its bytes,\n"
        "back to back; tail = p99 of the pauses with >= 1,000 pairs, else p90 (>= 100); ideal = the same\n"
        "percentile of the raw transfers (a neighbour's time slice hits both alike); goal: tail <= 1.5 x\n"
        "ideal + 2 ms, i.e. tail/ideal <= goal; tail/ideal's 95% CI: a bootstrap of whole rounds; met or NO\n"
        "where that interval is on one side of the goal, else ? (this run cannot tell); raw CV = the\n"
        "machine's noise: the round medians of the raw transfers"
    )
    lines += harness.render_warnings([w for r in results for w in r.warnings])
    return "\n".join(lines)


def as_json(results: list[CaseResult]) -> dict[str, object]:
    return {
        "bench": "checkpoint",
        "goal": f"tail <= {GOAL_FACTOR} x ideal + {GOAL_SLACK_MS} ms",
        "raw_gbps": harness.Spread.of([r.raw_gbps.median for r in results]).median if results else None,
        "cases": [asdict(r) for r in results],
        "warnings": [w for r in results for w in r.warnings],
    }
