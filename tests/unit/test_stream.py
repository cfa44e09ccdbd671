"""Stream round trips (native/stream.c) over a socketpair and loopback TCP."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest
import streambytes as sb
from netkit import Sender

from colo_plane import native
from colo_plane.native import (
    PAGE_SIZE,
    Bitmap,
    ControlId,
    Direction,
    Domain,
    DomainHash,
    ErrorCode,
    EventKind,
    InvalidArgument,
    StreamClosed,
    StreamError,
    StreamReader,
    StreamTimeout,
    StreamWriter,
)

Pair = tuple[socket.socket, socket.socket]
MakeDomain = Callable[..., Domain]
Send = Callable[[Callable[[], object]], Sender]
HEADER_BYTES = 40
CHECKPOINT_END = (8 + 24) + 8  # CHECKPOINT_INFO, then the empty CHECKPOINT


def page_data_bytes(n: int) -> int:
    """Stream bytes of the PAGE_DATA records for n pages."""
    records = -(-n // 1024)
    return records * 16 + n * (8 + PAGE_SIZE)


def dirty(dom: Domain, seconds: float) -> None:
    """Let dom's vCPU run a while (a nontrivial context and memory)."""
    dom.unpause()
    time.sleep(seconds)
    dom.pause()


def test_header_round_trip(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """A header read counts 40 bytes; a second header read is refused."""
    tx, rx = pair
    prim, sec = domains(pages=100, seed=1), domains(pages=100, seed=2)
    w = StreamWriter(tx)
    s = send(lambda: w.header(prim))
    r = StreamReader(rx, Direction.FORWARD, sec)
    r.header()
    s.join()
    assert r.bytes_read == HEADER_BYTES
    with pytest.raises(StreamError) as info:
        r.header()
    assert info.value.code == ErrorCode.PROTOCOL


def test_next_before_header_is_refused(pair: Pair, domains: MakeDomain) -> None:
    """Records before the header are refused with PROTOCOL."""
    _, rx = pair
    r = StreamReader(rx, Direction.FORWARD, domains(pages=8))
    with pytest.raises(StreamError) as info:
        r.next()
    assert info.value.code == ErrorCode.PROTOCOL


def test_control_forward(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """CHECKPOINT_REQUEST goes primary -> secondary with its generation and epoch."""
    tx, rx = pair
    prim, sec = domains(pages=100, seed=1), domains(pages=100, seed=2)
    w = StreamWriter(tx)

    def go() -> None:
        w.header(prim)
        w.control(ControlId.CHECKPOINT_REQUEST, generation=7, epoch=2**40 + 3)

    s = send(go)
    r = StreamReader(rx, Direction.FORWARD, sec)
    r.header()
    ev = r.next()
    s.join()
    assert ev.kind == EventKind.CONTROL
    assert ev.control_id == ControlId.CHECKPOINT_REQUEST
    assert (ev.generation, ev.epoch) == (7, 2**40 + 3)
    assert ev.bytes == 8 + 24


def test_control_back_channel(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """SUSPENDED, READY and RESUMED go secondary -> primary, in order."""
    tx, rx = pair  # tx is the secondary's end here
    prim, sec = domains(pages=100, seed=1), domains(pages=100, seed=2)
    w = StreamWriter(tx)
    ids = [ControlId.SECONDARY_SUSPENDED, ControlId.SECONDARY_READY, ControlId.SECONDARY_RESUMED]

    def go() -> None:
        w.header(sec)
        for i, cid in enumerate(ids):
            w.control(cid, generation=3, epoch=10 + i)

    s = send(go)
    r = StreamReader(rx, Direction.BACK, prim, dirty_out=Bitmap(100))
    r.header()
    events = [r.next() for _ in ids]
    s.join()
    assert [(e.kind, e.control_id, e.generation, e.epoch) for e in events] == [
        (EventKind.CONTROL, cid, 3, 10 + i) for i, cid in enumerate(ids)
    ]


def test_dirty_list_merges_into_dirty_out(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """A dirty list on the back channel is merged (OR) into dirty_out; pages = its length."""
    tx, rx = pair
    prim, sec = domains(pages=5000, seed=1), domains(pages=5000, seed=2)
    sent = Bitmap.random(5000, 1500, seed=11)
    before = Bitmap.random(5000, 300, seed=12)
    out = before.copy()
    w = StreamWriter(tx)

    def go() -> None:
        w.header(sec)
        w.dirty_list(sent)

    s = send(go)
    r = StreamReader(rx, Direction.BACK, prim, dirty_out=out)
    r.header()
    ev = r.next()
    s.join()
    assert ev.kind == EventKind.DIRTY
    assert ev.pages == 1500
    assert ev.bytes == 8 + 1500 * 8
    assert out == sent | before


def test_empty_dirty_list_is_one_record(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """An empty dirty set is sent as exactly one empty record: a DIRTY event with pages=0."""
    tx, rx = pair
    prim, sec = domains(pages=64, seed=1), domains(pages=64, seed=2)
    out = Bitmap(64)
    w = StreamWriter(tx)

    def go() -> None:
        w.header(sec)
        w.dirty_list(Bitmap(64))
        w.end()

    s = send(go)
    r = StreamReader(rx, Direction.BACK, prim, dirty_out=out)
    r.header()
    ev = r.next()
    assert (ev.kind, ev.pages, ev.bytes) == (EventKind.DIRTY, 0, 8)
    assert r.next().kind == EventKind.END
    s.join()
    assert out.count() == 0
    assert r.bytes_read == HEADER_BYTES + 16


@pytest.mark.parametrize("direction", [Direction.FORWARD, Direction.BACK])
def test_verify_both_ways(pair: Pair, domains: MakeDomain, send: Send, direction: Direction) -> None:
    """VERIFY carries epoch, both hashes and a page count, in either direction."""
    tx, rx = pair
    a, b = domains(pages=64, seed=1), domains(pages=64, seed=2)
    digest = DomainHash(memory=2**64 - 1, context=0x0123456789ABCDEF)
    w = StreamWriter(tx)

    def go() -> None:
        w.header(a)
        w.verify(99, digest, 64)

    s = send(go)
    kw = {"dirty_out": Bitmap(64)} if direction == Direction.BACK else {}
    r = StreamReader(rx, direction, b, **kw)
    r.header()
    ev = r.next()
    s.join()
    assert ev.kind == EventKind.VERIFY
    assert (ev.epoch, ev.memory_hash, ev.context_hash, ev.pages) == (99, 2**64 - 1, 0x0123456789ABCDEF, 64)


def test_end(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """END gives an END event; a close right after it is a clean EOF."""
    tx, rx = pair
    a, b = domains(pages=8, seed=1), domains(pages=8, seed=2)
    w = StreamWriter(tx)

    def go() -> None:
        w.header(a)
        w.end()
        tx.shutdown(socket.SHUT_WR)

    s = send(go)
    r = StreamReader(rx, Direction.FORWARD, b)
    r.header()
    assert r.next().kind == EventKind.END
    s.join()
    with pytest.raises(StreamClosed) as info:
        r.next()
    assert info.value.code == ErrorCode.EOF


@pytest.mark.parametrize("pages", [3001, 1024, 1])
def test_full_copy_makes_domains_equal(pair: Pair, domains: MakeDomain, send: Send, pages: int) -> None:
    """All pages + context + CHECKPOINT: the secondary's hashes equal the primary's."""
    tx, rx = pair
    prim, sec = domains(pages=pages, seed=1, rate=50_000), domains(pages=pages, seed=2)
    dirty(prim, 0.02)
    assert prim.hash() != sec.hash()
    everything = Bitmap.from_pfns(pages, range(pages))
    w = StreamWriter(tx)

    def go() -> None:
        w.header(prim)
        w.pages(prim, everything)
        w.context(prim)
        w.checkpoint(generation=4, epoch=1, last_seq=77)

    s = send(go)
    r = StreamReader(rx, Direction.FORWARD, sec)
    r.header()
    ev = r.next()
    s.join()
    assert ev.kind == EventKind.CHECKPOINT
    assert (ev.generation, ev.epoch, ev.last_seq, ev.pages) == (4, 1, 77, pages)
    ctx_len = len(prim.context())
    assert ev.bytes == page_data_bytes(pages) + 8 + ctx_len + (-ctx_len % 8) + CHECKPOINT_END
    assert r.bytes_read == HEADER_BYTES + ev.bytes
    assert sec.hash() == prim.hash()
    assert sec.context() == prim.context()


def test_random_pages_copy_exactly_those(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """2500 random pfns (3 PAGE_DATA records, odd count): exactly those pages now match."""
    tx, rx = pair
    n = 4096
    prim, sec = domains(pages=n, seed=1), domains(pages=n, seed=2)
    chosen = Bitmap.random(n, 2500, seed=5)
    before = list(sec.page_hashes()[1])
    w = StreamWriter(tx)

    def go() -> None:
        w.header(prim)
        w.pages(prim, chosen)
        w.checkpoint(generation=1, epoch=1)

    s = send(go)
    r = StreamReader(rx, Direction.FORWARD, sec)
    r.header()
    ev = r.next()
    s.join()
    assert ev.pages == 2500
    assert ev.bytes == page_data_bytes(2500) + CHECKPOINT_END
    want = list(prim.page_hashes()[1])
    got = list(sec.page_hashes()[1])
    members = set(chosen.to_pfns())
    for pfn in range(n):
        assert got[pfn] == (want[pfn] if pfn in members else before[pfn]), pfn
    assert sec.context() == bytes(len(sec.context()))  # no HVM_CONTEXT sent: context untouched


def test_consecutive_checkpoints(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """Several checkpoints on one stream, overlapping page sets, each applied whole."""
    tx, rx = pair
    n = 2048
    prim, sec = domains(pages=n, seed=1, rate=50_000), domains(pages=n, seed=2)
    prim.logdirty_enable()
    w = StreamWriter(tx)
    r = StreamReader(rx, Direction.FORWARD, sec)
    s = send(
        lambda: (
            w.header(prim),
            w.pages(prim, Bitmap.from_pfns(n, range(n))),
            w.context(prim),
            w.checkpoint(1, 0),
        )
    )
    r.header()
    assert r.next().pages == n
    s.join()
    prim.dirty_read_clear()
    for epoch in range(1, 4):
        dirty(prim, 0.02)
        d = prim.dirty_read_clear()
        s = send(lambda d=d, epoch=epoch: (w.pages(prim, d), w.context(prim), w.checkpoint(1, epoch)))
        ev = r.next()
        s.join()
        assert (ev.epoch, ev.pages) == (epoch, d.count())
        assert sec.hash() == prim.hash()


def test_same_pfn_twice_later_copy_wins(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """A pfn staged twice in one checkpoint ends up with the later copy."""
    tx, rx = pair
    sec = domains(pages=16, seed=2)
    data = (
        sb.header(16)
        + sb.page_data([5, 6, 5], [sb.page(1), sb.page(2), sb.page(3)])
        + sb.page_data([5], [sb.page(4)])
        + sb.checkpoint()
    )
    s = send(lambda: tx.sendall(data))
    r = StreamReader(rx, Direction.FORWARD, sec)
    r.header()
    ev = r.next()
    s.join()
    assert ev.pages == 2
    assert sec.read_page(5) == sb.page(4)
    assert sec.read_page(6) == sb.page(2)


def test_unknown_optional_record_is_skipped(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """An unknown optional record (bit 31) of odd length is skipped, padding and all."""
    tx, rx = pair
    a, b = domains(pages=8, seed=1), domains(pages=8, seed=2)
    w = StreamWriter(tx)
    body = bytes(range(1, 14))  # 13 bytes: 3 bytes of padding follow

    def go() -> None:
        w.header(a)
        w.raw_record(0x8000_0042, body)
        w.raw_record(0xFFFF_FFFF, b"")
        w.control(ControlId.CHECKPOINT_REQUEST, 1, 5)

    s = send(go)
    r = StreamReader(rx, Direction.FORWARD, b)
    r.header()
    ev = r.next()
    s.join()
    assert (ev.kind, ev.epoch) == (EventKind.CONTROL, 5)
    assert ev.bytes == (8 + 16) + 8 + (8 + 24)


def test_idle_timeout_keeps_reader_usable(pair: Pair, domains: MakeDomain) -> None:
    """No record within idle_timeout: StreamTimeout at the boundary, and the next record still reads."""
    tx, rx = pair
    b = domains(pages=8, seed=2)
    tx.sendall(sb.header(8))
    r = StreamReader(rx, Direction.FORWARD, b, idle_timeout=0.1)
    r.header()
    t0 = time.monotonic()
    with pytest.raises(StreamTimeout) as info:
        r.next()
    assert info.value.code == ErrorCode.TIMEOUT
    assert time.monotonic() - t0 < 2
    StreamWriter(tx).control(ControlId.CHECKPOINT_REQUEST, 1, 2)
    ev = r.next()
    assert (ev.kind, ev.epoch) == (EventKind.CONTROL, 2)


def test_timeout_inside_record_on_blocking_socket(domains: MakeDomain) -> None:
    """timeout bounds a wait inside a record even on a blocking fd (colo.h: "may be blocking or not").

    The peer sends half a VERIFY and stalls; the reader must give up after about 0.2 s.  The
    kernel guard of 1 s only keeps a failing run from hanging."""
    from netkit import guard

    a, b = socket.socketpair()
    with a, b:
        guard(b, 1.0)
        dom = domains(pages=8, seed=1)
        a.sendall(sb.header(8) + sb.verify(1, 2, 3, 4)[:20])
        r = StreamReader(b, Direction.FORWARD, dom, timeout=0.2)
        r.header()
        t0 = time.monotonic()
        with pytest.raises(StreamTimeout):
            r.next()
        assert time.monotonic() - t0 < 0.8


def test_writer_timeout_on_blocking_socket(domains: MakeDomain) -> None:
    """A writer whose peer does not read gives up after its timeout, also on a blocking fd."""
    from netkit import guard

    a, b = socket.socketpair()
    with a, b:
        guard(a, 1.0)
        dom = domains(pages=4096, seed=1)
        w = StreamWriter(a, timeout=0.2)
        t0 = time.monotonic()
        with pytest.raises(StreamTimeout):
            w.pages(dom, Bitmap.from_pfns(4096, range(4096)))
        assert time.monotonic() - t0 < 0.8


def test_raw_record_body_is_written_as_given(pair: Pair) -> None:
    """raw_record writes type, length, body and zero padding to 8."""
    tx, rx = pair
    StreamWriter(tx).raw_record(0x1234, b"abcde")
    got = rx.recv(64)
    assert got == struct.pack("<II", 0x1234, 5) + b"abcde" + bytes(3)


def test_timeout_inside_record_on_nonblocking_socket(domains: MakeDomain) -> None:
    """On a non-blocking fd a stalled peer inside a record gives StreamTimeout after timeout."""
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        dom = domains(pages=8, seed=1)
        a.sendall(sb.header(8) + sb.verify(1, 2, 3, 4)[:20])
        r = StreamReader(b, Direction.FORWARD, dom, timeout=0.2)
        r.header()
        t0 = time.monotonic()
        with pytest.raises(StreamTimeout):
            r.next()
        assert time.monotonic() - t0 < 0.8


def test_full_duplex(pair: Pair, domains: MakeDomain, send: Send) -> None:
    """Both directions at once on one connection: pages forward while a dirty list goes back."""
    p_end, s_end = pair
    n = 4096
    prim, sec = domains(pages=n, seed=1), domains(pages=n, seed=2)
    back_set = Bitmap.random(n, 3000, seed=9)
    got_back = Bitmap(n)
    pw, sw = StreamWriter(p_end), StreamWriter(s_end)

    def primary_sends() -> None:
        pw.header(prim)
        pw.pages(prim, Bitmap.from_pfns(n, range(n)))
        pw.context(prim)
        pw.checkpoint(2, 1)

    def secondary_sends() -> None:
        sw.header(sec)
        sw.control(ControlId.SECONDARY_SUSPENDED, 2, 1)
        sw.dirty_list(back_set)

    s1, s2 = send(primary_sends), send(secondary_sends)
    back = StreamReader(p_end, Direction.BACK, prim, dirty_out=got_back)
    fwd = StreamReader(s_end, Direction.FORWARD, sec)

    def primary_reads() -> None:
        back.header()
        assert back.next().control_id == ControlId.SECONDARY_SUSPENDED
        assert back.next().kind == EventKind.DIRTY

    s3 = send(primary_reads)
    fwd.header()
    ev = fwd.next()
    for s in (s1, s2, s3):
        s.join()
    assert (ev.kind, ev.pages) == (EventKind.CHECKPOINT, n)
    assert sec.hash() == prim.hash()
    assert got_back == back_set


def test_reader_and_writer_argument_checks(pair: Pair, domains: MakeDomain) -> None:
    """Dirty sets of the wrong size or on the wrong direction, and page sets of the wrong size, raise."""
    tx, rx = pair
    dom = domains(pages=64, seed=1)
    with pytest.raises(InvalidArgument):
        StreamReader(rx, Direction.BACK, dom, dirty_out=Bitmap(65))
    with pytest.raises(InvalidArgument):
        StreamReader(rx, Direction.BACK, dom)
    with pytest.raises(InvalidArgument):
        StreamReader(rx, Direction.FORWARD, dom, dirty_out=Bitmap(64))
    with pytest.raises(InvalidArgument):
        StreamWriter(tx).pages(dom, Bitmap(63))


def test_reader_close(domains: MakeDomain) -> None:
    """StreamReader's docstring says 'Free it with close()': close() exists and may be called twice."""
    a, b = socket.socketpair()
    with a, b:
        r = StreamReader(b, Direction.FORWARD, domains(pages=8, seed=1))
        r.close()
        r.close()


def test_checkpoint_is_info_then_empty_checkpoint(pair: Pair) -> None:
    """The writer ends a checkpoint as docs/stream.md says: CHECKPOINT_INFO
    with the claims, then Xen's CHECKPOINT with an empty body."""
    tx, rx = pair
    StreamWriter(tx).checkpoint(generation=7, epoch=2**40 + 3, last_seq=99)
    got = rx.recv(CHECKPOINT_END, socket.MSG_WAITALL)
    assert got == sb.checkpoint_info(7, 2**40 + 3, 99) + sb.bare_checkpoint()
    assert got[:8] == struct.pack("<II", 0x2000, 24)
    assert got[32:] == struct.pack("<II", 0x0E, 0)
    assert native.CHECKPOINT_END_BYTES == CHECKPOINT_END
