"""The seed-002 test (docs/design.md §2, step 4): copying only the primary's dirty set A
leaves the secondary wrong exactly on B - A; copying D = A | B makes both equal."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from netkit import Sender

from colo_plane.native import Bitmap, Direction, Domain, EventKind, StreamReader, StreamWriter

Pair = tuple[socket.socket, socket.socket]
MakeDomain = Callable[..., Domain]
Send = Callable[[Callable[[], object]], Sender]
PAGES = 4096
RATE = 5000  # pages/s on both sides


class Link:
    """The primary's writer and the secondary's reader over one connection."""

    def __init__(self, pair: Pair, send: Send, prim: Domain, sec: Domain) -> None:
        tx, rx = pair
        self.send, self.prim, self.sec = send, prim, sec
        self.w = StreamWriter(tx)
        self.r = StreamReader(rx, Direction.FORWARD, sec)
        s = send(lambda: self.w.header(prim))
        self.r.header()
        s.join()
        self.epoch = 0

    def checkpoint(self, pages: Bitmap) -> int:
        """Sends pages + context + CHECKPOINT; returns the pages the secondary applied."""
        self.epoch += 1

        def go() -> None:
            self.w.pages(self.prim, pages)
            self.w.context(self.prim)
            self.w.checkpoint(generation=1, epoch=self.epoch)

        s = self.send(go)
        ev = self.r.next()
        s.join()
        assert (ev.kind, ev.epoch) == (EventKind.CHECKPOINT, self.epoch)
        return ev.pages


def first_boot(link: Link) -> None:
    """Full memory + context: the two domains become identical."""
    assert link.prim.hash() != link.sec.hash()
    assert link.checkpoint(Bitmap.from_pfns(PAGES, range(PAGES))) == PAGES
    assert link.sec.hash() == link.prim.hash()


def run_both(prim: Domain, sec: Domain, seconds: float) -> tuple[Bitmap, Bitmap]:
    """Clears both logs, runs both guests, pauses them; returns (A, B)."""
    for d in (prim, sec):
        d.logdirty_enable()
        d.dirty_read_clear()
    prim.unpause()
    sec.unpause()
    time.sleep(seconds)
    prim.pause()
    sec.pause()
    return prim.dirty_read_clear(), sec.dirty_read_clear()


def differing(prim: Domain, sec: Domain) -> set[int]:
    _, hp = prim.page_hashes()
    _, hs = sec.page_hashes()
    return {pfn for pfn, (x, y) in enumerate(zip(list(hp), list(hs), strict=True)) if x != y}


def test_seed002(pair: Pair, send: Send, domains: MakeDomain) -> None:
    """Sending A alone is wrong (pages of B - A stay stale); sending A | B is right."""
    prim = domains(pages=PAGES, seed=1, rate=RATE)
    sec = domains(pages=PAGES, seed=2, rate=RATE)
    link = Link(pair, send, prim, sec)

    # Half 1: only A.
    first_boot(link)
    a, b = run_both(prim, sec, 0.3)
    assert a != b
    sa, sb = set(a.to_pfns()), set(b.to_pfns())
    assert sb - sa, "the secondary dirtied no page the primary did not: the test proves nothing"
    assert link.checkpoint(a) == a.count()
    after = sec.hash()
    assert after.memory != prim.hash().memory
    assert after.context == prim.hash().context  # the context did travel
    diff = differing(prim, sec)
    assert diff
    assert diff <= sb - sa
    assert diff == sb - sa  # every page only the secondary wrote is stale

    # Half 2: the same experiment, sending D = A | B.
    first_boot(link)
    a, b = run_both(prim, sec, 0.3)
    assert a != b
    assert set(b.to_pfns()) - set(a.to_pfns())
    d = a | b
    assert link.checkpoint(d) == d.count()
    assert sec.hash() == prim.hash()
    assert not differing(prim, sec)
