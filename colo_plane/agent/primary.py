"""The primary's side of the replication protocol (docs/design.md §2):
first boot and checkpoints, each one blocking call run off the event loop
(asyncio.to_thread).  Every page moves in C, and a checkpoint's steps run
in one C call (native/checkpoint.c): the paused guest never waits for the
GIL."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from colo_plane import metrics, native
from colo_plane.agent.secondary import IO_TIMEOUT, ProtocolError
from colo_plane.agent.syncpoints import Role, Stats, SyncPoint, SyncSink, Verify, now_ns
from colo_plane.native import ControlId, Direction, EventKind, TestHooks
from colo_plane.native.netproxy import NetProxy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    epoch: int
    stats: Stats
    verify: Verify
    armed: native.ArmResult | None = None  # an armed checkpoint: what started it


class PrimaryLink:
    """The primary's end of one authenticated data connection."""

    def __init__(
        self,
        *,
        domain: str,
        generation: int,
        dom: native.Domain,
        sock: socket.socket,
        verify: bool,
        sink: SyncSink,
        hooks: TestHooks | None = None,
        release: native.Proxy | None = None,
        netproxy: NetProxy | None = None,
    ) -> None:
        self.domain = domain
        self.generation = generation
        self.dom = dom
        self.sock = sock
        self.verify = verify
        self.sink = sink
        self.hooks = hooks or TestHooks()
        self.release = release  # the proxy whose held replies a checkpoint releases, in C
        self.netproxy = netproxy  # or the NIC proxy: last_seq and held frames, in C
        self.lock = threading.Lock()  # one checkpoint at a time
        self.broken = ""
        self._writer = native.StreamWriter(sock, timeout=IO_TIMEOUT)
        self._back_dirty = native.Bitmap(dom.pages)
        self._reader = native.StreamReader(
            sock,
            Direction.BACK,
            dom,
            dirty_out=self._back_dirty,
            min_generation=generation,
            timeout=IO_TIMEOUT,
            idle_timeout=IO_TIMEOUT,
        )
        self._a = native.Bitmap(dom.pages)
        self._d = native.Bitmap(dom.pages)
        context = len(dom.context())
        self._context_record = 8 + context + (-context % 8)  # header, blob, padding
        self._mine = native.PageHashes(dom.pages) if verify else None
        self._theirs = native.PageHashes(dom.pages) if verify else None
        if self._theirs is not None:
            self._reader.set_verify_buffer(self._theirs)

    # -- helpers -------------------------------------------------------------

    def _expect(self, kind: EventKind, epoch: int, control_id: ControlId | None = None) -> native.Event:
        event = self._reader.next()
        if event.kind != kind or (control_id is not None and event.control_id != control_id):
            got = ControlId(event.control_id).name if event.kind == EventKind.CONTROL else event.kind.name
            want = control_id.name if control_id is not None else kind.name
            raise ProtocolError(f"expected {want} for epoch {epoch}, got {got}")
        if event.epoch != epoch:
            raise ProtocolError(f"{kind.name} of epoch {event.epoch} during checkpoint {epoch}")
        return event

    def _own_digest(self) -> native.DomainHash:
        assert self._mine is not None
        digest, _ = self.dom.page_hashes(self._mine)
        return digest

    def _compare(self, epoch: int, mine: native.DomainHash | None) -> Verify:
        """First boot: reads the secondary's VERIFY and compares it with ours."""
        if mine is None:
            return Verify()
        event = self._expect(EventKind.VERIFY, epoch)
        return self._judge(epoch, mine, native.DomainHash(event.memory_hash, event.context_hash))

    def _judge(self, epoch: int, mine: native.DomainHash, theirs: native.DomainHash) -> Verify:
        """Compares the two sides' hashes (pages compared in C)."""
        assert self._mine is not None
        assert self._theirs is not None
        verify = Verify(checked=True, memory_hash=mine.memory, context_hash=mine.context)
        verify.context_mismatch = theirs.context != mine.context
        if theirs.memory != mine.memory:
            verify.mismatched_pages, verify.mismatched_pfns = self._mine.diff(self._theirs, 64)
        verify.match = not verify.context_mismatch and theirs.memory == mine.memory
        metrics.VERIFY_CHECKS.inc()
        if not verify.match:
            metrics.VERIFY_FAILURES.inc()
            log.error(
                "VERIFY FAILED %s epoch %d: %d pages differ (first: %s)%s",
                self.domain,
                epoch,
                verify.mismatched_pages,
                ", ".join(hex(p) for p in verify.mismatched_pfns[:8]),
                "; vCPU context differs" if verify.context_mismatch else "",
            )
        return verify

    def _service_seq(self) -> int:
        """The last client request the guest processed (sim service), or the last
        frame the NIC proxy gave it, read while paused."""
        if self.netproxy is not None:
            return self.netproxy.last_seq
        try:
            return self.dom.service_seq()
        except native.BackendError:
            return 0  # no guest service on this backend

    def _send_state(self, pages: native.Bitmap, epoch: int, last_seq: int) -> None:
        self._writer.pages(self.dom, pages)
        self._writer.context(self.dom)
        self._writer.checkpoint(self.generation, epoch, last_seq)

    def _report_request(self, epoch: int, sent_ns: int) -> None:
        metrics.SYNC_POINTS.labels(ControlId.CHECKPOINT_REQUEST.name).inc()
        self.sink(
            SyncPoint(
                self.domain,
                self.generation,
                epoch,
                ControlId.CHECKPOINT_REQUEST,
                Role.PRIMARY,
                sent_ns,
                Stats(),
            )
        )

    def _sent(self, pages: int) -> int:
        """Stream bytes of a checkpoint of pages pages (counted, not re-read)."""
        sent = native.page_data_bytes(pages) + self._context_record + native.CHECKPOINT_END_BYTES
        metrics.PAGES_SENT.inc(pages)
        metrics.BYTES_SENT.labels(self.domain).inc(sent)
        return sent

    # -- the protocol --------------------------------------------------------

    def first_boot(self, epoch: int) -> Outcome:
        """Pause, send every page and the context, resume at SECONDARY_READY."""
        with self.lock:
            return self._guard(lambda: self._first_boot(epoch))

    def checkpoint(self, epoch: int) -> Outcome:
        """The six steps; returns at SECONDARY_RESUMED."""
        with self.lock:
            return self._guard(lambda: self._checkpoint(epoch))

    def armed_checkpoint(self, epoch: int, wait: Callable[[], native.ArmResult]) -> Outcome:
        """Runs wait() (arming.py's: in C, without the lock, so GetStatus may
        hash meanwhile) until the checkpoint is to start, then the checkpoint
        at once, on this thread.  native.Disarmed: it never started."""
        if self.release is None and self.netproxy is None:
            raise ProtocolError("an armed checkpoint needs the domain's proxy")
        if self.broken:
            raise ProtocolError(f"data connection already failed: {self.broken}")
        why = wait()
        with self.lock:
            out = self._guard(lambda: self._checkpoint(epoch))
        return Outcome(out.epoch, out.stats, out.verify, why)

    def _guard(self, run: Callable[[], Outcome]) -> Outcome:
        if self.broken:
            raise ProtocolError(f"data connection already failed: {self.broken}")
        try:
            return run()
        except (native.NativeError, ProtocolError, OSError) as exc:
            self.broken = str(exc)
            if self.dom.paused:
                self.dom.unpause()  # the primary keeps running; its output stays held
            raise

    def _first_boot(self, epoch: int) -> Outcome:
        start = now_ns()
        if not self.dom.paused:
            self.dom.pause()
        pause_start = now_ns()
        last_seq = self._service_seq()
        self._writer.header(self.dom)
        self._reader.header()
        self.dom.logdirty_enable()
        self.dom.dirty_read_clear(self._a)  # dirty tracking starts at this snapshot
        everything = native.Bitmap.full(self.dom.pages)
        self._send_state(everything, epoch, last_seq)
        mine = self._own_digest() if self.verify else None
        verify = self._compare(epoch, mine)
        self._expect(EventKind.CONTROL, epoch, ControlId.SECONDARY_READY)
        self.dom.unpause()
        stats = Stats(
            pages=self.dom.pages,
            bytes=self._sent(self.dom.pages),
            last_seq=last_seq,
            pause_ns=now_ns() - pause_start,
        )
        self._expect(EventKind.CONTROL, epoch, ControlId.SECONDARY_RESUMED)
        stats.duration_ns = now_ns() - start
        return Outcome(epoch, stats, verify)

    def _checkpoint(self, epoch: int) -> Outcome:
        try:
            r = native.primary_checkpoint(
                self._writer,
                self._reader,
                self.dom,
                (self._a, self._back_dirty, self._d),
                generation=self.generation,
                epoch=epoch,
                page_hashes=self._mine,
                proxy=self.release,
                netproxy=self.netproxy,
                test_hooks=self.hooks,
            )
        except native.NativeError as exc:
            if exc.checkpoint is not None and exc.checkpoint.t_request_ns:
                self._report_request(epoch, exc.checkpoint.t_request_ns)  # it was sent
            raise
        self._report_request(epoch, r.t_request_ns)
        stats = Stats.of(r, sent_bytes=self._sent(r.pages))
        verify = Verify()
        if self.verify:
            mine = native.DomainHash(r.memory_hash, r.context_hash)
            verify = self._judge(epoch, mine, native.DomainHash(r.peer_memory_hash, r.peer_context_hash))
        for name, size in (("A", stats.dirty_a), ("B", stats.dirty_b), ("D", stats.dirty_d)):
            metrics.DIRTY_PAGES.labels(name).observe(size)
        metrics.CHECKPOINT_PAUSE.labels("primary", self.domain).observe(stats.pause_ns / 1e9)
        metrics.CHECKPOINT_DURATION.labels("primary", self.domain).observe(stats.duration_ns / 1e9)
        metrics.CHECKPOINTS.labels(
            "primary", "ok" if verify.match or not verify.checked else "mismatch"
        ).inc()
        return Outcome(epoch, stats, verify)
