"""`colo bench checkpoint`: the primary's pause time through the real
protocol code (PrimaryLink and SecondaryLoop over loopback TCP), with the
dirty set forced to an exact size, against the ideal pause of moving the
same bytes over raw TCP.  In rounds (harness): each round times a few raw
transfers of one checkpoint's bytes and a batch of checkpoints, alternating
which goes first, so the raw transfers meet the same minutes, and the same
scheduler, as the pauses; the ideal is their median, the tail is from every
pause of the run pooled."""

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
from colo_plane.tools.bench.loopback import RawLink, tcp_pair
from colo_plane.tools.bench.stream import RECORD_BYTES, stream_bytes

GOAL_FACTOR = 1.5
GOAL_SLACK_MS = 2.0
ROUNDS = 15  # rounds: the raw CV (the machine's noise) across 15 medians of a round each
RAW_SHARE = 4  # raw transfers per round: a quarter of the round's checkpoints (at least 3)
# Bytes a size's checkpoints may move when no count is asked for: enough
# for a pooled p99 (1,000 samples) up to 10,000 pages (41 MB each), a p90
# above (100,000 pages: 105 checkpoints); 80 s in all on a quiet machine.
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
    ideal_ms: float  # the median raw transfer of the same bytes, every one of the run pooled
    ideal_interval_ms: tuple[float, float]  # that median's 95 % interval
    tail_over_ideal: float
    goal_ms: float  # 1.5 x ideal + 2 ms
    goal_over_ideal: float
    noise: harness.Noise
    verdict: harness.Verdict  # the p99 against goal_ms (harness.judge_tail)
    met: bool | None  # None: this run cannot tell (within its noise, or too few checkpoints)
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
    bursts = max(3, math.ceil(per_round / RAW_SHARE))
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

        def batch(count: int) -> list[float]:
            nonlocal epoch, sent
            pauses = []
            for _ in range(count):
                epoch += 1
                primary.sim_dirty(native.Bitmap.random(domain_pages, dirty, seed=epoch))
                outcome = link.checkpoint(epoch)
                if outcome.stats.dirty_d != dirty:
                    raise RuntimeError(f"bench: D has {outcome.stats.dirty_d} pages, forced {dirty}")
                pauses.append(outcome.stats.pause_ns / 1e6)
                sent = outcome.stats.bytes
            return pauses

        batch(WARMUP_CHECKPOINTS)  # the secondary's first applies fault its pages in
        # The baseline moves one checkpoint's bytes from a buffer as large, as
        # a burst of its own (a thread start, ~0.1 ms, on top: the ideal errs
        # on the generous side), a few times a round.
        raw = RawLink(sent, min(sent, RECORD_BYTES))
        raw.seconds(sent)  # first touch of the buffers: page faults are not noise

        def baseline() -> list[float]:
            return [raw.seconds(sent) * 1e3 for _ in range(bursts)]

        try:
            runs = harness.interleave(rounds, baseline, lambda: batch(per_round))
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
    pauses = [p for r in runs for p in r.subject]
    pooled = harness.Tail.of(pauses)
    label, tail = pooled.top
    # The ideal, like the tail, from every sample of the run pooled: the
    # median raw transfer and its interval (the goal's interval follows).
    ideals = harness.Spread.of([t for r in runs for t in r.baseline])

    def goal_of(ideal: float) -> float:
        return GOAL_FACTOR * ideal + GOAL_SLACK_MS

    ideal = ideals.median
    ideal_interval = (ideals.median_lo, ideals.median_hi)
    round_ideals = [statistics.median(r.baseline) for r in runs]
    interval = harness.tail_interval(label, pauses)
    # The goal is on the p99; with fewer checkpoints than it needs the
    # verdict rests on the p90 and the max, or says it cannot tell.
    verdict = harness.judge_tail(
        "p99", pauses, goal_of(ideal), goal_interval=(goal_of(ideal_interval[0]), goal_of(ideal_interval[1]))
    )
    noise = harness.Noise.of("raw TCP baseline", round_ideals)
    raw_gbps = harness.Spread.of([sent / (t / 1e3) / 1e9 for t in round_ideals])
    return CaseResult(
        dirty_pages=dirty,
        checkpoints=pooled.samples,
        rounds=rounds,
        bytes_per_checkpoint=sent,
        pause_ms=pooled,
        pause_p50_ms=pooled.p50,
        pause_p99_ms=pooled.p99,
        tail=label,
        tail_ms=tail,
        tail_interval_ms=interval,
        round_p50_ms=harness.Spread.of([harness.percentile_of("p50", r.subject) for r in runs]),
        raw_gbps=raw_gbps,
        ideal_ms=ideal,
        ideal_interval_ms=ideal_interval,
        tail_over_ideal=tail / ideal,
        goal_ms=goal_of(ideal),
        goal_over_ideal=goal_of(ideal) / ideal,
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
        f"colo bench checkpoint: {rounds} rounds of (raw TCP, checkpoints), alternating which goes first",
        f"{'dirty':>7}{'ckpts':>6}{'MB':>7}{'p50 ms':>8}{'tail ms (95% CI)':>22}{'max ms':>8}"
        f"{'ideal ms (95% CI)':>20}{'tail/ideal':>11}{'goal':>6}{'raw CV':>7}  met",
    ]
    for r in results:
        t = r.pause_ms
        lo, hi = r.tail_interval_ms
        ilo, ihi = r.ideal_interval_ms
        tail = f"{r.tail} {_ms(r.tail_ms)} ({_ms(lo)}-{_ms(hi)})"
        ideal = f"{_ms(r.ideal_ms)} ({_ms(ilo)}-{_ms(ihi)})"
        lines.append(
            f"{r.dirty_pages:>7}{r.checkpoints:>6}{r.bytes_per_checkpoint / 1e6:>7.1f}{_ms(t.p50):>8}"
            f"{tail:>22}{_ms(t.max):>8}{ideal:>20}{r.tail_over_ideal:>11.2f}{r.goal_over_ideal:>6.2f}"
            f"{r.noise.cv:>7.0%}  {r.verdict.word()}"
        )
    lines.append(
        "pause = primary suspended to resumed, every checkpoint of the run pooled; tail = p99 with >= 1,000\n"
        "checkpoints, else p90 (>= 100) or the max; ideal = raw TCP moving the same bytes (the median, all\n"
        "rounds pooled); goal: p99 <= 1.5 x ideal + 2 ms, i.e. tail/ideal <= goal (below 1,000 checkpoints:\n"
        "met if the max is within it, NO if the p90 is past it); ? where the tail is as near the goal as\n"
        "the noise of their 95% CIs reaches (this run cannot tell); raw CV = the machine's noise"
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
