"""What a checkpoint claims (its CHECKPOINT_INFO) is checked before anything of it applies,
and nothing staged outlives a failure (issue 11 item 2, found by fuzzing the
secondary's whole checkpoint call with a peer that holds the pair secret).

Each test states its finding first, with what today's API can observe (the
guest's hashes, the pages a later checkpoint applies); the stage queries
come after."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable

import pytest
import streambytes as sb

from colo_plane.native import (
    Bitmap,
    CheckpointResult,
    ControlId,
    Direction,
    Domain,
    ErrorCode,
    EventKind,
    NativeError,
    StreamError,
    StreamReader,
    StreamTimeout,
    StreamWriter,
    secondary_checkpoint,
)

Pair = tuple[socket.socket, socket.socket]
MakeDomain = Callable[..., Domain]
PAGES = 64
GEN, EPOCH = 5, 3
FWD = Direction.FORWARD
REQUEST = ControlId.CHECKPOINT_REQUEST


def staged() -> bytes:
    """Pages 1 and 2 and a context: applied, they would change the guest."""
    return sb.page_data([1, 2], [sb.page(0xA1), sb.page(0xA2)]) + sb.hvm_context(bytes(range(256)))


def request(epoch: int = EPOCH) -> bytes:
    return sb.control(REQUEST, GEN, epoch)


class Secondary:
    """The secondary's end of one connection: the primary's bytes are all
    sent up front (closed after them unless keep_open), then read here."""

    def __init__(
        self,
        pair: Pair,
        dom: Domain,
        data: bytes,
        *,
        keep_open: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        tx, rx = pair
        tx.sendall(sb.header(dom.pages) + data)
        if not keep_open:
            tx.shutdown(socket.SHUT_WR)
        self.dom = dom
        dom.logdirty_enable()  # as the agent's first boot leaves it
        self.writer = StreamWriter(rx, timeout=5)
        self.reader = StreamReader(rx, FWD, dom, min_generation=GEN, timeout=5, idle_timeout=idle_timeout)
        self.reader.header()

    def checkpoint(self, epoch: int = EPOCH) -> CheckpointResult:
        """As the agent's loop: CHECKPOINT_REQUEST, then the whole call."""
        ev = self.reader.next()
        assert (ev.kind, ev.control_id, ev.epoch) == (EventKind.CONTROL, REQUEST, epoch)
        return secondary_checkpoint(
            self.writer, self.reader, self.dom, Bitmap(self.dom.pages), generation=GEN, epoch=epoch
        )


def fails_unchanged(sec: Secondary, epoch: int = EPOCH) -> NativeError:
    """The call fails, the guest's memory and context are as they were, it
    stays paused, and nothing is left staged."""
    before = sec.dom.hash()
    with pytest.raises(NativeError) as info:
        sec.checkpoint(epoch)
    assert sec.dom.hash() == before, "a refused checkpoint changed the guest"
    assert sec.dom.paused
    assert sec.dom.staged() == (0, False)
    return info.value


def later_checkpoint_applies_only_its_own(dom: Domain) -> None:
    """A good checkpoint on a new connection to the same domain applies its
    one page and none of an earlier, failed checkpoint's."""
    page1 = dom.read_page(1)
    a, b = socket.socketpair()
    with a, b:
        r = Secondary((a, b), dom, request() + sb.page_data([3], [sb.page(0x33)]) + sb.checkpoint(GEN, EPOCH))
        result = r.checkpoint()
    dom.pause()
    assert result.pages == 1, "leftover pages of a failed checkpoint were applied"
    assert dom.read_page(1) == page1
    assert dom.read_page(3) == sb.page(0x33)


# ---- finding 1: a CHECKPOINT of the wrong epoch ---------------------------------


@pytest.mark.parametrize("claimed", [EPOCH - 1, EPOCH + 1, 0, 2**64 - 1])
def test_wrong_epoch_checkpoint_is_not_applied(pair: Pair, domains: MakeDomain, claimed: int) -> None:
    """Was: applied, then the call failed, leaving the guest paused on the rejected state."""
    dom = domains(pages=PAGES, seed=2)
    sec = Secondary(pair, dom, request() + staged() + sb.checkpoint(GEN, claimed))
    err = fails_unchanged(sec)
    assert isinstance(err, StreamError)
    assert err.code == ErrorCode.PROTOCOL
    later_checkpoint_applies_only_its_own(dom)


# ---- finding 2: a CHECKPOINT of a higher generation -----------------------------


@pytest.mark.parametrize("claimed", [GEN + 1, 2**63, 2**64 - 1])
def test_higher_generation_checkpoint_is_refused(pair: Pair, domains: MakeDomain, claimed: int) -> None:
    """Was: accepted on the lower generation's stream (only 'not below' was checked)."""
    dom = domains(pages=PAGES, seed=2)
    sec = Secondary(pair, dom, request() + staged() + sb.checkpoint(claimed, EPOCH))
    err = fails_unchanged(sec)
    assert err.code == ErrorCode.WRONG_GENERATION


def test_higher_generation_first_boot_is_refused(pair: Pair, domains: MakeDomain) -> None:
    """The stream's generation binds a CHECKPOINT read outside the call too (the first boot)."""
    dom = domains(pages=PAGES, seed=2)
    before = dom.hash()
    sec = Secondary(pair, dom, staged() + sb.checkpoint(GEN + 1, 1))
    with pytest.raises(NativeError) as info:
        sec.reader.next()
    assert dom.hash() == before
    assert info.value.code == ErrorCode.WRONG_GENERATION
    assert dom.staged() == (0, False)


def test_lower_generation_checkpoint_is_stale(pair: Pair, domains: MakeDomain) -> None:
    dom = domains(pages=PAGES, seed=2)
    err = fails_unchanged(Secondary(pair, dom, request() + staged() + sb.checkpoint(GEN - 1, EPOCH)))
    assert err.code == ErrorCode.STALE_GENERATION


def test_other_generation_sync_point_is_refused(pair: Pair, domains: MakeDomain) -> None:
    """A sync point claims a generation too: on a generation-5 stream it is 5."""
    sec = Secondary(pair, domains(pages=PAGES, seed=2), sb.control(REQUEST, GEN + 1, EPOCH))
    with pytest.raises(StreamError) as info:
        sec.reader.next()
    assert info.value.code == ErrorCode.WRONG_GENERATION


# ---- finding 3: END, a sync point or VERIFY mid-checkpoint -------------------------


INTRUDERS = [
    ("END", sb.end()),
    ("CHECKPOINT_REQUEST", request(EPOCH + 1)),
    ("CHECKPOINT_REQUEST same epoch", request(EPOCH)),
    ("VERIFY", sb.verify(EPOCH, 1, 2, PAGES)),
]


@pytest.mark.parametrize("intruder", [c[1] for c in INTRUDERS], ids=[c[0] for c in INTRUDERS])
def test_record_mid_checkpoint_drops_the_stage(pair: Pair, domains: MakeDomain, intruder: bytes) -> None:
    """Was: the call failed with the pages still staged, and a later checkpoint
    on the same domain applied them with its own."""
    dom = domains(pages=PAGES, seed=2)
    sec = Secondary(pair, dom, request() + staged() + intruder + sb.checkpoint(GEN, EPOCH))
    before = dom.hash()
    with pytest.raises(NativeError):
        sec.checkpoint()
    assert dom.hash() == before
    later_checkpoint_applies_only_its_own(dom)
    assert dom.staged() == (0, False)


def test_record_mid_checkpoint_fails_the_reader_too(pair: Pair, domains: MakeDomain) -> None:
    """Read outside the call, a sync point inside a checkpoint is PROTOCOL, and the stage goes."""
    dom = domains(pages=PAGES, seed=2)
    sec = Secondary(pair, dom, staged() + request())
    with pytest.raises(StreamError) as info:
        sec.reader.next()
    assert info.value.code == ErrorCode.PROTOCOL
    assert dom.staged() == (0, False)


def test_timeout_mid_checkpoint_drops_the_stage(pair: Pair, domains: MakeDomain) -> None:
    """The primary stalls between two records of a checkpoint: the call times out and drops the stage."""
    dom = domains(pages=PAGES, seed=2)
    sec = Secondary(pair, dom, request() + staged(), keep_open=True, idle_timeout=0.1)
    with pytest.raises(StreamTimeout):
        sec.checkpoint()
    assert dom.staged() == (0, False)
    with pytest.raises(StreamError) as info:  # the call ended the stream
        sec.reader.next()
    assert info.value.code == ErrorCode.PROTOCOL


# ---- last_seq ---------------------------------------------------------------------


def test_last_seq_backwards_is_refused(pair: Pair, domains: MakeDomain) -> None:
    """A state cannot include fewer client requests than the one before it on the stream."""
    dom = domains(pages=PAGES, seed=2)
    first = request() + staged() + sb.checkpoint(GEN, EPOCH, last_seq=10)
    same = request(EPOCH + 1) + sb.checkpoint(GEN, EPOCH + 1, last_seq=10)  # no new request: fine
    back = request(EPOCH + 2) + staged() + sb.checkpoint(GEN, EPOCH + 2, last_seq=9)
    sec = Secondary(pair, dom, first + same + back)
    assert sec.checkpoint().last_seq == 10
    assert sec.checkpoint(EPOCH + 1).last_seq == 10
    err = fails_unchanged(sec, EPOCH + 2)
    assert err.code == ErrorCode.PROTOCOL


# ---- CHECKPOINT_INFO, right before its CHECKPOINT -------------------------------------


def test_claims_are_refused_before_the_checkpoint_arrives(pair: Pair, domains: MakeDomain) -> None:
    """The claims are checked on CHECKPOINT_INFO itself: the call fails there,
    without waiting for a CHECKPOINT that never comes."""
    dom = domains(pages=PAGES, seed=2)
    sec = Secondary(pair, dom, request() + staged() + sb.checkpoint_info(GEN, EPOCH + 1), keep_open=True)
    err = fails_unchanged(sec)
    assert err.code == ErrorCode.PROTOCOL
    assert "CHECKPOINT_INFO of epoch" in str(err)


def test_call_refuses_an_info_read_before_it(pair: Pair, domains: MakeDomain) -> None:
    """A CHECKPOINT_INFO read outside the call was checked without the call's
    epoch: the call refuses to apply the CHECKPOINT that follows it."""
    dom = domains(pages=PAGES, seed=2)
    sec = Secondary(
        pair, dom, staged() + sb.checkpoint_info(GEN, EPOCH + 7), keep_open=True, idle_timeout=0.1
    )
    with pytest.raises(StreamTimeout):
        sec.reader.next()  # the CHECKPOINT_INFO is read, its CHECKPOINT not yet
    before = dom.hash()
    pair[0].sendall(sb.bare_checkpoint())
    with pytest.raises(StreamError) as info:
        secondary_checkpoint(sec.writer, sec.reader, dom, Bitmap(PAGES), generation=GEN, epoch=EPOCH)
    assert info.value.code == ErrorCode.PROTOCOL
    assert dom.hash() == before
    assert dom.staged() == (0, False)


BAD_ENDS = [
    ("no CHECKPOINT_INFO", sb.bare_checkpoint(), ErrorCode.PROTOCOL),
    ("CHECKPOINT_INFO twice", sb.checkpoint_info(GEN, EPOCH) + sb.checkpoint(GEN, EPOCH), ErrorCode.PROTOCOL),
    (
        "a page between",
        sb.checkpoint_info(GEN, EPOCH) + sb.page_data([3], [sb.page(3)]) + sb.bare_checkpoint(),
        ErrorCode.PROTOCOL,
    ),
    (
        "a CHECKPOINT with a body",
        sb.checkpoint_info(GEN, EPOCH) + sb.bare_checkpoint(bytes(24)),
        ErrorCode.BAD_LENGTH,
    ),
    ("CHECKPOINT_INFO alone, then END", sb.checkpoint_info(GEN, EPOCH) + sb.end(), ErrorCode.PROTOCOL),
]


@pytest.mark.parametrize(("end", "code"), [c[1:] for c in BAD_ENDS], ids=[c[0] for c in BAD_ENDS])
def test_bad_checkpoint_end_is_not_applied(
    pair: Pair, domains: MakeDomain, end: bytes, code: ErrorCode
) -> None:
    """A checkpoint whose end is not CHECKPOINT_INFO then an empty CHECKPOINT applies nothing."""
    dom = domains(pages=PAGES, seed=2)
    err = fails_unchanged(Secondary(pair, dom, request() + staged() + end))
    assert err.code == code
    later_checkpoint_applies_only_its_own(dom)


# ---- the stage and the readers of a domain ------------------------------------------


def stage_and_stall(pair: Pair, dom: Domain) -> StreamReader:
    """A reader that staged two pages and a context and waits for more (idle timeout)."""
    sec = Secondary(pair, dom, staged(), keep_open=True, idle_timeout=0.1)
    with pytest.raises(StreamTimeout):
        sec.reader.next()
    assert dom.staged() == (2, True)  # the reader stays usable, and so does its stage
    return sec.reader


def test_new_reader_drops_the_stage(pair: Pair, domains: MakeDomain) -> None:
    """A reader opened on the domain drops what an older stream staged; the older
    reader then refuses to apply the rest of its checkpoint."""
    dom = domains(pages=PAGES, seed=2)
    before = dom.hash()
    old = stage_and_stall(pair, dom)
    a, b = socket.socketpair()
    with a, b:
        StreamReader(b, FWD, dom)
        assert dom.staged() == (0, False)
        pair[0].sendall(sb.page_data([3], [sb.page(3)]) + sb.checkpoint(GEN, 1))
        with pytest.raises(StreamError) as info:
            old.next()
    assert info.value.code == ErrorCode.PROTOCOL
    assert dom.hash() == before


def test_closed_reader_drops_its_stage(pair: Pair, domains: MakeDomain) -> None:
    dom = domains(pages=PAGES, seed=2)
    stage_and_stall(pair, dom).close()
    assert dom.staged() == (0, False)


def test_closing_another_reader_keeps_the_stage(pair: Pair, domains: MakeDomain) -> None:
    """Only the reader that staged a checkpoint drops it when closed (or collected)."""
    dom = domains(pages=PAGES, seed=2)
    a, b = socket.socketpair()
    with a, b:
        other = StreamReader(b, FWD, dom)
        r = stage_and_stall(pair, dom)
        other.close()
        del other
        gc.collect()
        assert dom.staged() == (2, True)
        pair[0].sendall(sb.checkpoint(GEN, 1))
        assert r.next().pages == 2
    assert dom.read_page(2) == sb.page(0xA2)


def test_domain_closed_before_its_reader(pair: Pair) -> None:
    """Closing a domain frees its readers first (the C reader reads its domain when freed)."""
    dom = Domain.sim(pages=PAGES, seed=2)
    r = stage_and_stall(pair, dom)
    dom.close()
    with pytest.raises(ValueError, match="closed"):
        r.next()
    r.close()
    del r
    gc.collect()


def test_reader_for_another_domain_is_refused(pair: Pair, domains: MakeDomain) -> None:
    """The call applies into its domain only through that domain's forward reader."""
    dom, other = domains(pages=PAGES, seed=2), domains(pages=PAGES, seed=3)
    sec = Secondary(pair, dom, request() + staged() + sb.checkpoint(GEN, EPOCH))
    assert sec.reader.next().kind == EventKind.CONTROL
    with pytest.raises(NativeError) as info:
        secondary_checkpoint(sec.writer, sec.reader, other, Bitmap(PAGES), generation=GEN, epoch=EPOCH)
    assert info.value.code == ErrorCode.INVAL
