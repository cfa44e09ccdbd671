"""`colo bench stream`: checkpoints through the real stream writer and
reader over loopback TCP, against a raw C baseline moving the same bytes in
the same write sizes from a plain buffer, measured in the same run."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from colo_plane import native
from colo_plane.bench.loopback import tcp_pair
from colo_plane.bench.rawio import RawBuffer, raw_recv, raw_send

RECORD_HEAD = 16  # record header + PAGE_DATA count/reserved
RECORD_BYTES = RECORD_HEAD + native.MAX_PFNS_PER_RECORD * (8 + native.PAGE_SIZE)
CONTEXT_RECORD = 8 + 256  # sim vCPU context
CONTROL_RECORDS = 8 + 24 + 8 + 24  # CHECKPOINT_STATE + CHECKPOINT


@dataclass(frozen=True)
class CaseResult:
    name: str
    pages_per_checkpoint: int
    checkpoints: int
    bytes: int
    stream_gbps: float
    raw_gbps: float
    ratio: float


def stream_bytes(pages: int) -> int:
    """Bytes on the wire for one checkpoint of pages pages."""
    return native.page_data_bytes(pages) + CONTEXT_RECORD + CONTROL_RECORDS


def _run_pair(send: Callable[[], None], recv: Callable[[], None]) -> float:
    """Runs send in a thread and recv here; seconds from start to both done."""
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            send()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=sender)
    start = time.perf_counter()
    thread.start()
    recv()
    thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def _time_stream(
    primary: native.Domain, secondary: native.Domain, pages: native.Bitmap, rounds: int
) -> float:
    tx, rx = tcp_pair()
    with tx, rx:
        writer = native.StreamWriter(tx)
        reader = native.StreamReader(rx, native.Direction.FORWARD, secondary)

        def send() -> None:
            writer.header(primary)
            for epoch in range(1, rounds + 1):
                writer.control(native.ControlId.CHECKPOINT_REQUEST, 1, epoch)
                writer.pages(primary, pages)
                writer.context(primary)
                writer.checkpoint(1, epoch)

        def recv() -> None:
            reader.header()
            for _ in range(rounds):
                reader.next()  # CHECKPOINT_REQUEST
                event = reader.next()
                if event.kind != native.EventKind.CHECKPOINT or event.pages != pages.count():
                    raise RuntimeError(f"bench: unexpected {event}")

        return _run_pair(send, recv)


def _time_raw(total: int, tx_buf: RawBuffer, rx_buf: RawBuffer) -> float:
    tx, rx = tcp_pair()
    with tx, rx:
        return _run_pair(
            lambda: raw_send(tx, tx_buf, total, RECORD_BYTES),
            lambda: raw_recv(rx, rx_buf, total, RECORD_BYTES),
        )


def run_case(name: str, domain_pages: int, dirty: int, rounds: int, repeats: int) -> CaseResult:
    """Alternates stream and raw runs `repeats` times; keeps the median of each."""
    primary = native.Domain.sim(pages=domain_pages, seed=1)
    secondary = native.Domain.sim(pages=domain_pages, seed=2)
    try:
        _time_stream(primary, secondary, native.Bitmap.full(domain_pages), 1)  # first boot
        pages = native.Bitmap.random(domain_pages, dirty, seed=7)
        total = stream_bytes(dirty) * rounds
        # Buffers as large as one checkpoint: the baseline moves the same
        # amount of distinct memory, not one hot 4 MiB buffer.
        size = stream_bytes(dirty)
        tx_buf, rx_buf = RawBuffer(size), RawBuffer(size)
        stream_s, raw_s = [], []
        for _ in range(repeats):
            stream_s.append(_time_stream(primary, secondary, pages, rounds))
            raw_s.append(_time_raw(total, tx_buf, rx_buf))
        if primary.hash() != secondary.hash():
            raise RuntimeError("bench: secondary differs from primary after the copy")
    finally:
        primary.close()
        secondary.close()
    stream_gbps = total / statistics.median(stream_s) / 1e9
    raw_gbps = total / statistics.median(raw_s) / 1e9
    return CaseResult(name, dirty, rounds, total, stream_gbps, raw_gbps, stream_gbps / raw_gbps)


def run(*, domain_mib: int = 256, dirty_pages: int = 10_000, repeats: int = 5) -> list[CaseResult]:
    domain_pages = domain_mib * 1024 * 1024 // native.PAGE_SIZE
    if dirty_pages > domain_pages:
        raise ValueError(f"{dirty_pages} dirty pages do not fit a {domain_mib} MiB domain")
    return [
        run_case(f"full {domain_mib} MiB", domain_pages, domain_pages, rounds=2, repeats=repeats),
        run_case(f"{dirty_pages} dirty pages", domain_pages, dirty_pages, rounds=20, repeats=repeats),
    ]


def render(results: list[CaseResult]) -> str:
    lines = [f"{'case':<22}{'MB/ckpt':>9}{'stream GB/s':>13}{'raw GB/s':>10}{'ratio':>8}"]
    for r in results:
        mb = r.bytes / r.checkpoints / 1e6
        lines.append(f"{r.name:<22}{mb:>9.1f}{r.stream_gbps:>13.2f}{r.raw_gbps:>10.2f}{r.ratio:>8.2f}")
    lines.append("ratio = stream / raw TCP baseline (same bytes, same write sizes, same run); goal >= 0.85")
    return "\n".join(lines)


def as_json(results: list[CaseResult]) -> dict[str, object]:
    return {"bench": "stream", "cases": [asdict(r) for r in results]}
