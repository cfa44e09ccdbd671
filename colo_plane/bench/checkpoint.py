"""`colo bench checkpoint`: the primary's pause time through the real
protocol code (PrimaryLink and SecondaryLoop over loopback TCP), with the
dirty set forced to an exact size, against the ideal pause of moving the
same bytes at the raw TCP rate measured in the same run."""

from __future__ import annotations

import multiprocessing
import socket
import statistics
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

from colo_plane import native
from colo_plane.agent.primary import PrimaryLink
from colo_plane.agent.secondary import SecondaryLoop
from colo_plane.agent.syncpoints import SyncPoint
from colo_plane.bench.loopback import tcp_pair
from colo_plane.bench.rawio import RawBuffer
from colo_plane.bench.stream import RECORD_BYTES, _time_raw

GOAL_FACTOR = 1.5
GOAL_SLACK_MS = 2.0


@dataclass(frozen=True)
class CaseResult:
    dirty_pages: int
    checkpoints: int
    bytes_per_checkpoint: int
    pause_p50_ms: float
    pause_p99_ms: float
    ideal_ms: float
    p99_over_ideal: float
    goal_ms: float
    met: bool


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ignore(_: SyncPoint) -> None:
    pass


def _raw_gbps(total: int) -> float:
    tx_buf, rx_buf = RawBuffer(min(total, 512 << 20)), RawBuffer(min(total, 512 << 20))
    runs = [total / _time_raw(total, tx_buf, rx_buf) / 1e9 for _ in range(3)]
    return statistics.median(runs)


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


def run_case(dirty: int, checkpoints: int, domain_pages: int, raw_gbps: float) -> CaseResult:
    primary = native.Domain.sim(pages=domain_pages, seed=1)
    tx, rx = tcp_pair()
    theirs, mine = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_secondary, args=(rx, domain_pages, mine))
    child.start()
    rx.close()
    try:
        link = PrimaryLink(domain="bench", generation=1, dom=primary, sock=tx, verify=False, sink=_ignore)
        link.first_boot(1)
        pauses, sent = [], 0
        for epoch in range(2, checkpoints + 2):
            primary.sim_dirty(native.Bitmap.random(domain_pages, dirty, seed=epoch))
            outcome = link.checkpoint(epoch)
            if outcome.stats.dirty_d != dirty:
                raise RuntimeError(f"bench: D has {outcome.stats.dirty_d} pages, forced {dirty}")
            pauses.append(outcome.stats.pause_ns / 1e6)
            sent = outcome.stats.bytes
        primary.pause()
        tx.shutdown(socket.SHUT_WR)  # end of stream: the secondary reports its hash
        if not theirs.poll(60) or theirs.recv() != primary.hash():
            raise RuntimeError("bench: the secondary differs from the primary")
    finally:
        tx.close()
        child.join(30)
        primary.close()
    ideal = sent / (raw_gbps * 1e9) * 1e3
    p99 = _percentile(pauses, 0.99)
    goal = GOAL_FACTOR * ideal + GOAL_SLACK_MS
    return CaseResult(
        dirty, checkpoints, sent, statistics.median(pauses), p99, ideal, p99 / ideal, goal, p99 <= goal
    )


def run(
    *, sizes: tuple[int, ...] = (1_000, 10_000, 100_000), checkpoints: int = 100
) -> tuple[float, list[CaseResult]]:
    domain_pages = max(131_072, *sizes)
    raw = _raw_gbps(RECORD_BYTES * 64)
    return raw, [run_case(size, checkpoints, domain_pages, raw) for size in sizes]


def render(raw_gbps: float, results: list[CaseResult]) -> str:
    lines = [
        f"raw TCP baseline (same run): {raw_gbps:.2f} GB/s",
        f"{'dirty':>8}{'ckpts':>7}{'MB':>8}{'p50 ms':>9}{'p99 ms':>9}{'ideal ms':>10}{'p99/ideal':>11}"
        f"{'goal ms':>9}  met",
    ]
    for r in results:
        lines.append(
            f"{r.dirty_pages:>8}{r.checkpoints:>7}{r.bytes_per_checkpoint / 1e6:>8.1f}{r.pause_p50_ms:>9.2f}"
            f"{r.pause_p99_ms:>9.2f}{r.ideal_ms:>10.2f}{r.p99_over_ideal:>11.2f}{r.goal_ms:>9.2f}  "
            f"{'yes' if r.met else 'NO'}"
        )
    lines.append(
        "pause = primary suspended to resumed; ideal = bytes / raw GB/s; goal: p99 <= 1.5 x ideal + 2 ms"
    )
    return "\n".join(lines)


def as_json(raw_gbps: float, results: list[CaseResult]) -> dict[str, object]:
    return {"bench": "checkpoint", "raw_gbps": raw_gbps, "cases": [asdict(r) for r in results]}
