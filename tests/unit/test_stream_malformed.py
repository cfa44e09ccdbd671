"""Malformed input (docs/design.md §3): each class rejected with its own error code,
the secondary's memory and context untouched, and the reader broken afterwards."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest
import streambytes as sb
from netkit import Sender

from colo_plane.native import (
    PAGE_SIZE,
    Bitmap,
    ControlId,
    Direction,
    Domain,
    DomainType,
    ErrorCode,
    Event,
    EventKind,
    NativeError,
    RecordType,
    StreamClosed,
    StreamError,
    StreamReader,
)

Pair = tuple[socket.socket, socket.socket]
MakeDomain = Callable[..., Domain]
Send = Callable[[Callable[[], object]], Sender]
PAGES = 64
FWD, BACK = Direction.FORWARD, Direction.BACK
OPT = sb.OPTIONAL


def run_bad(
    pair: Pair,
    send: Send,
    dom: Domain,
    data: bytes,
    *,
    direction: Direction = FWD,
    dirty_out: Bitmap | None = None,
    min_generation: int = 0,
    events: int = 0,
) -> NativeError:
    """Feeds data, then closes, to a reader into dom until it fails.

    Asserts dom's memory and context hashes did not move, that exactly `events`
    events came before the failure, and that the reader is broken afterwards."""
    tx, rx = pair
    before = dom.hash()

    def go() -> None:
        tx.sendall(data)
        tx.shutdown(socket.SHUT_WR)

    s = send(go)
    if direction == BACK and dirty_out is None:
        dirty_out = Bitmap(dom.pages)
    r = StreamReader(rx, direction, dom, dirty_out=dirty_out, min_generation=min_generation, timeout=5)
    seen: list[Event] = []
    with pytest.raises(NativeError) as info:
        read_all(r, seen)
    assert len(seen) == events, seen
    assert dom.hash() == before, "guest memory or context touched"
    with pytest.raises(StreamError) as again:
        r.next()
    assert again.value.code == ErrorCode.PROTOCOL
    s.join()
    return info.value


def read_all(r: StreamReader, seen: list[Event]) -> None:
    """Reads the header and then events into seen, until an error."""
    r.header()
    while True:
        seen.append(r.next())


def ok(n: int = PAGES) -> bytes:
    return sb.header(n)


def staged() -> bytes:
    """A valid PAGE_DATA and context that would change the secondary if applied."""
    return sb.page_data([1, 2], [sb.page(0xA1), sb.page(0xA2)]) + sb.hvm_context(bytes(range(256)))


HEADER_CASES = [
    ("marker zero", sb.image_header(marker=0) + sb.domain_header(PAGES), ErrorCode.BAD_MAGIC),
    (
        "marker off by one",
        sb.image_header(marker=sb.MARKER - 1) + sb.domain_header(PAGES),
        ErrorCode.BAD_MAGIC,
    ),
    ("Xen's id", sb.image_header(ident=0x58454E46) + sb.domain_header(PAGES), ErrorCode.BAD_ID),
    ("version 1", sb.image_header(version=1) + sb.domain_header(PAGES), ErrorCode.BAD_VERSION),
    ("version 3", sb.image_header(version=3) + sb.domain_header(PAGES), ErrorCode.BAD_VERSION),
    ("version 0", sb.image_header(version=0) + sb.domain_header(PAGES), ErrorCode.BAD_VERSION),
    ("big-endian option", sb.image_header(options=1) + sb.domain_header(PAGES), ErrorCode.BAD_OPTIONS),
    ("option bit 15", sb.image_header(options=0x8000) + sb.domain_header(PAGES), ErrorCode.BAD_OPTIONS),
    (
        "reserved bits",
        sb.image_header(reserved=b"\0\0\0\0\0\x01") + sb.domain_header(PAGES),
        ErrorCode.BAD_OPTIONS,
    ),
    (
        "page shift 13",
        sb.image_header() + sb.domain_header(PAGES, page_shift=13),
        ErrorCode.BAD_DOMAIN_HEADER,
    ),
    (
        "HVM domain type",
        sb.image_header() + sb.domain_header(PAGES, dom_type=DomainType.X86_HVM),
        ErrorCode.BAD_DOMAIN_HEADER,
    ),
    ("fewer pages", sb.image_header() + sb.domain_header(PAGES - 1), ErrorCode.BAD_DOMAIN_HEADER),
    ("more pages", sb.image_header() + sb.domain_header(PAGES + 1), ErrorCode.BAD_DOMAIN_HEADER),
    ("domain reserved", sb.image_header() + sb.domain_header(PAGES, reserved=1), ErrorCode.BAD_DOMAIN_HEADER),
]


@pytest.mark.parametrize(("data", "code"), [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES])
def test_bad_header(pair: Pair, send: Send, domains: MakeDomain, data: bytes, code: ErrorCode) -> None:
    """Each header fault has its own code; a valid record after it is never read."""
    dom = domains(pages=PAGES, seed=2)
    err = run_bad(pair, send, dom, data + staged() + sb.checkpoint())
    assert isinstance(err, StreamError)
    assert err.code == code


@pytest.mark.parametrize("cut", [0, 10, 24, 39])
def test_truncated_header(pair: Pair, send: Send, domains: MakeDomain, cut: int) -> None:
    """The peer closing before the whole 40-byte header is TRUNCATED."""
    err = run_bad(pair, send, domains(pages=PAGES, seed=2), ok()[:cut])
    assert isinstance(err, StreamClosed)
    assert err.code == ErrorCode.TRUNCATED


RECORD_CASES = [
    # unknown mandatory types
    ("type 0x42", FWD, sb.record(0x42, bytes(8)), ErrorCode.UNKNOWN_RECORD),
    ("Xen PAGE_INFO 0x02", FWD, sb.record(0x02, bytes(8)), ErrorCode.UNKNOWN_RECORD),
    ("type 0x7fffffff", BACK, sb.record(0x7FFF_FFFF), ErrorCode.UNKNOWN_RECORD),
    # lengths past a bound (checked from the record header, before any body)
    ("optional past 128 MiB", FWD, sb.head_only(OPT | 0x42, sb.MAX_RECORD + 8), ErrorCode.RECORD_TOO_LONG),
    ("length 0xfffffff8", FWD, sb.head_only(RecordType.VERIFY, 0xFFFF_FFF8), ErrorCode.RECORD_TOO_LONG),
    (
        "context past 1 MiB",
        FWD,
        sb.head_only(RecordType.HVM_CONTEXT, sb.MAX_CONTEXT + 8),
        ErrorCode.RECORD_TOO_LONG,
    ),
    (
        "page data past bound",
        FWD,
        sb.head_only(RecordType.PAGE_DATA, sb.PAGE_DATA_MAX + 8),
        ErrorCode.RECORD_TOO_LONG,
    ),
    (
        "page data of 1025 pfns",
        FWD,
        sb.head_only(RecordType.PAGE_DATA, 8 + 1025 * 4104) + struct.pack("<II", 1025, 0),
        ErrorCode.RECORD_TOO_LONG,
    ),
    (
        "dirty list past 128 MiB",
        BACK,
        sb.head_only(RecordType.CHECKPOINT_DIRTY_PFN_LIST, sb.MAX_RECORD + 8),
        ErrorCode.RECORD_TOO_LONG,
    ),
    # lengths that disagree with the contents
    (
        "page data count 2, one page",
        FWD,
        sb.page_data([1], [sb.page(1)], count=2),
        ErrorCode.BAD_LENGTH,
    ),
    (
        "page data count 0",
        FWD,
        sb.record(RecordType.PAGE_DATA, struct.pack("<II", 0, 0)),
        ErrorCode.BAD_LENGTH,
    ),
    (
        "page data count 1025, one page",
        FWD,
        sb.page_data([1], [sb.page(1)], count=1025),
        ErrorCode.BAD_LENGTH,
    ),
    ("checkpoint state of 16", FWD, sb.record(RecordType.CHECKPOINT_STATE, bytes(16)), ErrorCode.BAD_LENGTH),
    ("checkpoint state of 32", BACK, sb.record(RecordType.CHECKPOINT_STATE, bytes(32)), ErrorCode.BAD_LENGTH),
    ("checkpoint of 16", FWD, sb.record(RecordType.CHECKPOINT, bytes(16)), ErrorCode.BAD_LENGTH),
    (
        "checkpoint with version 1's body",
        FWD,
        sb.checkpoint_info() + sb.bare_checkpoint(struct.pack("<QQQ", 1, 1, 0)),
        ErrorCode.BAD_LENGTH,
    ),
    ("checkpoint info of 16", FWD, sb.record(RecordType.CHECKPOINT_INFO, bytes(16)), ErrorCode.BAD_LENGTH),
    ("checkpoint info of 32", FWD, sb.record(RecordType.CHECKPOINT_INFO, bytes(32)), ErrorCode.BAD_LENGTH),
    ("empty checkpoint info", FWD, sb.record(RecordType.CHECKPOINT_INFO), ErrorCode.BAD_LENGTH),
    ("verify of 24", FWD, sb.record(RecordType.VERIFY, bytes(24)), ErrorCode.BAD_LENGTH),
    ("end of 8", FWD, sb.record(RecordType.END, bytes(8)), ErrorCode.BAD_LENGTH),
    (
        "dirty list of 12",
        BACK,
        sb.record(RecordType.CHECKPOINT_DIRTY_PFN_LIST, bytes(12)),
        ErrorCode.BAD_LENGTH,
    ),
    # nonzero padding or reserved fields
    ("context pad byte", FWD, sb.hvm_context(bytes(253), pad=b"\0\0\x07"), ErrorCode.BAD_PADDING),
    ("page data reserved", FWD, sb.page_data([1], [sb.page(1)], reserved=1), ErrorCode.BAD_PADDING),
    ("control reserved", FWD, sb.control(0, reserved=1), ErrorCode.BAD_PADDING),
    # pfns past the domain
    ("pfn == pages", FWD, sb.page_data([PAGES], [sb.page(1)]), ErrorCode.PFN_RANGE),
    ("pfn 2^64-1", FWD, sb.page_data([3, 2**64 - 1], [sb.page(1), sb.page(2)]), ErrorCode.PFN_RANGE),
    ("dirty pfn == pages", BACK, sb.dirty_list([1, PAGES]), ErrorCode.PFN_RANGE),
    # records in the wrong direction
    ("dirty list forward", FWD, sb.dirty_list([1, 2]), ErrorCode.WRONG_DIRECTION),
    ("empty dirty list forward", FWD, sb.dirty_list([]), ErrorCode.WRONG_DIRECTION),
    ("SECONDARY_RESUMED forward", FWD, sb.control(ControlId.SECONDARY_RESUMED), ErrorCode.WRONG_DIRECTION),
    (
        "SECONDARY_SUSPENDED forward",
        FWD,
        sb.control(ControlId.SECONDARY_SUSPENDED),
        ErrorCode.WRONG_DIRECTION,
    ),
    ("CHECKPOINT_REQUEST back", BACK, sb.control(ControlId.CHECKPOINT_REQUEST), ErrorCode.WRONG_DIRECTION),
    ("page data back", BACK, sb.page_data([1], [sb.page(1)]), ErrorCode.WRONG_DIRECTION),
    ("context back", BACK, sb.hvm_context(bytes(256)), ErrorCode.WRONG_DIRECTION),
    ("checkpoint back", BACK, sb.checkpoint(), ErrorCode.WRONG_DIRECTION),
    ("bare checkpoint back", BACK, sb.bare_checkpoint(), ErrorCode.WRONG_DIRECTION),
    # CHECKPOINT_INFO: once, right before its CHECKPOINT; no CHECKPOINT without it
    ("checkpoint without info", FWD, sb.bare_checkpoint(), ErrorCode.PROTOCOL),
    ("checkpoint info twice", FWD, sb.checkpoint_info() + sb.checkpoint_info(), ErrorCode.PROTOCOL),
    (
        "page data after info",
        FWD,
        sb.checkpoint_info() + sb.page_data([3], [sb.page(3)]),
        ErrorCode.PROTOCOL,
    ),
    ("context after info", FWD, sb.checkpoint_info() + sb.hvm_context(bytes(256)), ErrorCode.PROTOCOL),
    ("optional after info", FWD, sb.checkpoint_info() + sb.record(OPT | 0x42, bytes(8)), ErrorCode.PROTOCOL),
    ("END after info", FWD, sb.checkpoint_info() + sb.end(), ErrorCode.PROTOCOL),
    ("request after info", FWD, sb.checkpoint_info() + sb.control(0), ErrorCode.PROTOCOL),
    # control ids
    ("control id 7", FWD, sb.control(7), ErrorCode.BAD_CONTROL_ID),
    ("control id 4", BACK, sb.control(4), ErrorCode.BAD_CONTROL_ID),
    ("control id 2^32-1", FWD, sb.control(2**32 - 1), ErrorCode.BAD_CONTROL_ID),
]


@pytest.mark.parametrize("case", [c[1:] for c in RECORD_CASES], ids=[c[0] for c in RECORD_CASES])
def test_bad_record(
    pair: Pair, send: Send, domains: MakeDomain, case: tuple[Direction, bytes, ErrorCode]
) -> None:
    """Each bad record has its own code, even mid-checkpoint: what was staged is dropped."""
    direction, bad, code = case
    dom = domains(pages=PAGES, seed=2)
    prefix = staged() if direction == FWD else b""
    err = run_bad(pair, send, dom, ok() + prefix + bad + sb.checkpoint(), direction=direction)
    assert isinstance(err, StreamError)
    assert err.code == code


def test_bad_dirty_list_leaves_dirty_out_alone(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """A dirty list with one pfn out of range merges none of its pfns."""
    out = Bitmap.from_pfns(PAGES, [9])
    err = run_bad(
        pair,
        send,
        domains(pages=PAGES, seed=2),
        ok() + sb.dirty_list([1, 2, PAGES + 5]),
        direction=BACK,
        dirty_out=out,
    )
    assert err.code == ErrorCode.PFN_RANGE
    assert out.to_pfns() == [9]


def test_optional_record_with_nonzero_padding(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """Nonzero padding is malformed on every record, a skipped optional one included (docs/design.md §3)."""
    bad = sb.record(OPT | 0x42, b"abcde", pad=b"\0\x01\0")
    err = run_bad(pair, send, domains(pages=PAGES, seed=2), ok() + staged() + bad + sb.checkpoint())
    assert err.code == ErrorCode.BAD_PADDING


def test_pfn_past_end_after_staged_records(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """PAGE_DATA records of the same checkpoint were staged; a later bad pfn drops them all."""
    n = 3000
    dom = domains(pages=n, seed=2)
    good = [sb.page_data(list(range(i, i + 1024, 2)), [sb.page(i)] * 512) for i in (0, 1024)]
    data = sb.header(n) + b"".join(good) + sb.page_data([5, n], [sb.page(1), sb.page(2)]) + sb.checkpoint()
    err = run_bad(pair, send, dom, data)
    assert err.code == ErrorCode.PFN_RANGE


@pytest.mark.parametrize("cut_into_page", [0, 1, PAGE_SIZE - 1, 3 * PAGE_SIZE])
def test_close_inside_page_data(pair: Pair, send: Send, domains: MakeDomain, cut_into_page: int) -> None:
    """The peer closing inside PAGE_DATA's pages is TRUNCATED; the staged records are dropped."""
    dom = domains(pages=PAGES, seed=2)
    rec = sb.page_data([7, 8, 9, 10], [sb.page(k) for k in range(4)])
    data = ok() + staged() + rec[: 16 + 4 * 8 + cut_into_page]
    err = run_bad(pair, send, dom, data)
    assert isinstance(err, StreamClosed)
    assert err.code == ErrorCode.TRUNCATED


@pytest.mark.parametrize("cut", [1, 4, 7, 8 + 10, 32 + 4])
def test_close_inside_record(pair: Pair, send: Send, domains: MakeDomain, cut: int) -> None:
    """The peer closing inside a record header or a small body is TRUNCATED."""
    data = ok() + staged() + sb.checkpoint()[:cut]
    err = run_bad(pair, send, domains(pages=PAGES, seed=2), data)
    assert err.code == ErrorCode.TRUNCATED


def test_close_between_records(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """The peer closing at a record boundary mid-checkpoint is EOF; nothing is applied."""
    err = run_bad(pair, send, domains(pages=PAGES, seed=2), ok() + staged())
    assert isinstance(err, StreamClosed)
    assert err.code == ErrorCode.EOF


def test_stale_generation_checkpoint(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """A CHECKPOINT below min_generation is STALE_GENERATION and nothing staged is applied."""
    dom = domains(pages=PAGES, seed=2)
    data = ok() + staged() + sb.checkpoint(generation=4, epoch=9)
    err = run_bad(pair, send, dom, data, min_generation=5)
    assert err.code == ErrorCode.STALE_GENERATION


def test_checkpoint_info_stale_before_its_checkpoint(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """The claims are CHECKPOINT_INFO's: refused there, the CHECKPOINT after it never read."""
    dom = domains(pages=PAGES, seed=2)
    data = ok() + staged() + sb.checkpoint_info(generation=4, epoch=9)
    err = run_bad(pair, send, dom, data, min_generation=5)
    assert err.code == ErrorCode.STALE_GENERATION


def test_version_1_stream_is_refused(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """A peer speaking the old layout (CHECKPOINT with generation, epoch and
    last_seq in its body) is refused at its header, not misread."""
    dom = domains(pages=PAGES, seed=2)
    old_checkpoint = sb.bare_checkpoint(struct.pack("<QQQ", 1, 1, 0))
    data = sb.image_header(version=1) + sb.domain_header(PAGES) + staged() + old_checkpoint
    err = run_bad(pair, send, dom, data)
    assert err.code == ErrorCode.BAD_VERSION
    assert "version 1" in str(err)


def test_stale_generation_control(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """A sync point of an older generation is refused too, after a current one was accepted."""
    tx, rx = pair
    dom = domains(pages=PAGES, seed=2)
    tx.sendall(ok() + sb.control(0, generation=5) + sb.control(0, generation=5, epoch=2))
    r = StreamReader(rx, FWD, dom, min_generation=5, timeout=5)
    r.header()
    assert r.next().generation == 5
    r.set_min_generation(6)
    with pytest.raises(StreamError) as info:
        r.next()
    assert info.value.code == ErrorCode.STALE_GENERATION


def test_checkpoint_onto_running_domain(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """Applying onto an unpaused domain is NOT_PAUSED and guest memory is untouched."""
    dom = domains(pages=PAGES, seed=2, rate=0)  # running but never writing: its hash is stable
    dom.unpause()
    err = run_bad(pair, send, dom, ok() + staged() + sb.checkpoint())
    assert err.code == ErrorCode.NOT_PAUSED
    dom.pause()


def test_wrong_size_context_is_not_half_applied(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """A checkpoint whose context the backend refuses (sim: not 256 bytes) applies nothing.

    The pages of the checkpoint must not be committed when the context then fails."""
    dom = domains(pages=PAGES, seed=2)
    data = (
        ok()
        + sb.page_data([1, 2], [sb.page(0xA1), sb.page(0xA2)])
        + sb.hvm_context(bytes(8))
        + sb.checkpoint()
    )
    err = run_bad(pair, send, dom, data)
    assert isinstance(err, StreamError)


def test_discarded_staging_does_not_leak(domains: MakeDomain) -> None:
    """Pages staged by a failed stream never show up in a later checkpoint of a new stream."""
    dom = domains(pages=PAGES, seed=2)
    before = dom.read_page(1)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(ok() + sb.page_data([1], [sb.page(0xEE)]))
        a.shutdown(socket.SHUT_WR)
        r = StreamReader(b, FWD, dom, timeout=5)
        r.header()
        with pytest.raises(StreamClosed):
            r.next()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(ok() + sb.page_data([2], [sb.page(0x22)]) + sb.checkpoint())
        r = StreamReader(b, FWD, dom, timeout=5)
        r.header()
        ev = r.next()
    assert (ev.kind, ev.pages) == (EventKind.CHECKPOINT, 1)
    assert dom.read_page(2) == sb.page(0x22)
    assert dom.read_page(1) == before
