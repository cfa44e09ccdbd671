"""`colo bench stream`: checkpoints through the real stream writer and
reader over loopback TCP, against a raw C baseline moving the same bytes in
the same write sizes from a plain buffer, in interleaved rounds (harness)."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

from colo_plane import native
from colo_plane.tools.bench import harness
from colo_plane.tools.bench.loopback import RawLink, run_pair, tcp_pair

RECORD_HEAD = 16  # record header + PAGE_DATA count/reserved
RECORD_BYTES = RECORD_HEAD + native.MAX_PFNS_PER_RECORD * (8 + native.PAGE_SIZE)
CONTEXT_RECORD = 8 + 256  # sim vCPU context
CONTROL_RECORDS = 8 + 24 + native.CHECKPOINT_END_BYTES  # CHECKPOINT_STATE + CHECKPOINT_INFO + CHECKPOINT
GOAL = 0.85  # stream >= 0.85 x raw TCP
# Rounds of the full domain: a median's 95 % interval from the 31st to the
# 50th, about -/+ 0.05 of the ratio at this machine's usual noise.  The
# dirty case's rounds are cheaper, and it runs as many as move the same
# bytes (262 for 10,000 pages: -/+ 0.03), for it sits nearer its goal;
# 25-50 s in all.
ROUNDS = 80


@dataclass(frozen=True)
class CaseResult:
    name: str
    pages_per_checkpoint: int
    checkpoints: int  # per measurement
    bytes: int  # per measurement
    rounds: int
    stream_gbps: float  # median over rounds
    raw_gbps: float  # median over rounds
    ratio: float  # median over rounds of that round's stream / raw
    ratio_spread: harness.Spread
    raw_spread: harness.Spread
    noise: harness.Noise
    verdict: harness.Verdict
    warnings: list[str]


def stream_bytes(pages: int) -> int:
    """Bytes on the wire for one checkpoint of pages pages."""
    return native.page_data_bytes(pages) + CONTEXT_RECORD + CONTROL_RECORDS


class _StreamLink:
    """The subject: the real writer and reader over one loopback connection,
    kept open from round to round as a pair's data connection is."""

    def __init__(self, primary: native.Domain, secondary: native.Domain) -> None:
        self.primary = primary
        self.tx, self.rx = tcp_pair()
        self.writer = native.StreamWriter(self.tx)
        self.reader = native.StreamReader(self.rx, native.Direction.FORWARD, secondary)
        self.epoch = 0
        run_pair(lambda: self.writer.header(primary), self.reader.header)

    def seconds(self, pages: native.Bitmap, checkpoints: int) -> float:
        first = self.epoch + 1
        self.epoch += checkpoints

        def send() -> None:
            for epoch in range(first, first + checkpoints):
                self.writer.control(native.ControlId.CHECKPOINT_REQUEST, 1, epoch)
                self.writer.pages(self.primary, pages)
                self.writer.context(self.primary)
                self.writer.checkpoint(1, epoch)

        def recv() -> None:
            for _ in range(checkpoints):
                self.reader.next()  # CHECKPOINT_REQUEST
                event = self.reader.next()
                if event.kind != native.EventKind.CHECKPOINT or event.pages != pages.count():
                    raise RuntimeError(f"bench: unexpected {event}")

        return run_pair(send, recv)

    def close(self) -> None:
        self.reader.close()
        self.tx.close()
        self.rx.close()


def run_case(name: str, domain_pages: int, dirty: int, checkpoints: int, rounds: int) -> CaseResult:
    """rounds of (raw, stream), each moving checkpoints checkpoints' bytes,
    alternating which goes first, after one warm-up round.  Rounds are
    short (0.05-0.2 s) so that both halves of one meet the same machine."""
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(native.Domain.sim(pages=domain_pages, seed=1))
        secondary = stack.enter_context(native.Domain.sim(pages=domain_pages, seed=2))
        stream = _StreamLink(primary, secondary)
        stack.callback(stream.close)
        stream.seconds(native.Bitmap.full(domain_pages), 1)  # first boot
        pages = native.Bitmap.random(domain_pages, dirty, seed=7)
        total = stream_bytes(dirty) * checkpoints
        # A buffer as large as one checkpoint: the baseline moves the same
        # amount of distinct memory, not one hot 4 MiB buffer (in writes no
        # larger than it: a checkpoint can be smaller than one record).
        raw = stack.enter_context(RawLink(stream_bytes(dirty), min(stream_bytes(dirty), RECORD_BYTES)))
        runs = harness.interleave(
            rounds,
            lambda: total / raw.seconds(total) / 1e9,
            lambda: total / stream.seconds(pages, checkpoints) / 1e9,
            warmup=1,
        )
        if primary.hash() != secondary.hash():
            raise RuntimeError("bench: secondary differs from primary after the copy")
    raw_gbps = [r.baseline for r in runs]
    ratio = harness.Spread.of([r.subject / r.baseline for r in runs])
    noise = harness.Noise.of("raw TCP baseline", raw_gbps)
    verdict = harness.judge_median(ratio, GOAL, at_least=True)
    return CaseResult(
        name=name,
        pages_per_checkpoint=dirty,
        checkpoints=checkpoints,
        bytes=total,
        rounds=rounds,
        stream_gbps=harness.Spread.of([r.subject for r in runs]).median,
        raw_gbps=harness.Spread.of(raw_gbps).median,
        ratio=ratio.median,
        ratio_spread=ratio,
        raw_spread=harness.Spread.of(raw_gbps),
        noise=noise,
        verdict=verdict,
        warnings=harness.warnings(name, noise, verdict),
    )


def same_bytes_rounds(rounds: int, full_pages: int, dirty: int, dirty_checkpoints: int) -> int:
    """Rounds of the dirty case that move what rounds of the full domain move."""
    full = stream_bytes(full_pages)
    return max(rounds, rounds * full // (stream_bytes(dirty) * dirty_checkpoints))


def run(*, domain_mib: int = 256, dirty_pages: int = 10_000, rounds: int = ROUNDS) -> list[CaseResult]:
    """rounds of the full domain; the dirty case as many as move the same bytes."""
    domain_pages = domain_mib * 1024 * 1024 // native.PAGE_SIZE
    if dirty_pages > domain_pages:
        raise ValueError(f"{dirty_pages} dirty pages do not fit a {domain_mib} MiB domain")
    dirty_rounds = same_bytes_rounds(rounds, domain_pages, dirty_pages, 2)
    return [
        run_case(f"full {domain_mib} MiB", domain_pages, domain_pages, checkpoints=1, rounds=rounds),
        run_case(f"{dirty_pages} dirty pages", domain_pages, dirty_pages, checkpoints=2, rounds=dirty_rounds),
    ]


def render(results: list[CaseResult]) -> str:
    lines = [
        "colo bench stream: rounds of (raw TCP, stream), alternating which goes first",
        f"{'case':<20}{'MB/ckpt':>8}{'rounds':>7}{'stream GB/s':>12}{'raw GB/s':>9}{'ratio':>7}{'95% CI':>11}"
        f"{'IQR':>11}{'min-max':>11}{'raw CV':>8}  goal >= {GOAL}",
    ]
    for r in results:
        s = r.ratio_spread
        lines.append(
            f"{r.name:<20}{r.bytes / r.checkpoints / 1e6:>8.1f}{r.rounds:>7}{r.stream_gbps:>12.2f}"
            f"{r.raw_gbps:>9.2f}"
            f"{r.ratio:>7.2f}{s.median_lo:>6.2f}-{s.median_hi:<4.2f}{s.iqr():>11}{s.range():>11}"
            f"{r.noise.cv:>8.0%}  {r.verdict.word()}"
        )
    lines.append(
        "ratio = median over rounds of stream / raw TCP in the same round (same bytes, same write sizes);\n"
        "95% CI = the median's confidence interval; IQR, min-max = of the per-round ratios;\n"
        "raw CV = the machine's noise: the raw baseline's variation across rounds;\n"
        "goal: met or NO where the 95% CI is on one side of it, else ? (this run cannot tell)"
    )
    lines += harness.render_warnings([w for r in results for w in r.warnings])
    return "\n".join(lines)


def as_json(results: list[CaseResult]) -> dict[str, object]:
    return {
        "bench": "stream",
        "goal": GOAL,
        "cases": [asdict(r) for r in results],
        "warnings": [w for r in results for w in r.warnings],
    }
