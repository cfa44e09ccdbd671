"""The secondary's side of the replication protocol (docs/design.md §2),
run in a thread of its own: it is driven by the primary's stream."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass

from colo_plane import metrics, native
from colo_plane.agent.syncpoints import Role, Stats, SyncPoint, SyncSink, Verify, now_ns
from colo_plane.native import ControlId, Direction, EventKind
from colo_plane.native.netproxy import NetProxy

log = logging.getLogger(__name__)

IO_TIMEOUT = 30.0  # seconds a record may take once it has started


class ProtocolError(Exception):
    """The primary's stream broke the protocol's order."""


@dataclass
class SecondaryState:
    """What the loop publishes for GetStatus (read from the event loop)."""

    epoch: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    suspended: bool = False
    last_stats: Stats | None = None
    last_error: str = ""
    finished: bool = False


class SecondaryLoop:
    """Receives the first boot, then checkpoint after checkpoint, until the
    stream ends (released, promoted, or the primary is gone)."""

    def __init__(
        self,
        *,
        domain: str,
        generation: int,
        dom: native.Domain,
        sock: socket.socket,
        verify: bool,
        sink: SyncSink,
    ) -> None:
        self.domain = domain
        self.generation = generation
        self.dom = dom
        self.sock = sock
        self.verify = verify
        self.sink = sink
        self.state = SecondaryState()
        self.netproxy: NetProxy | None = None  # the NIC proxy, once its link arrived
        self.lock = threading.Lock()  # held while the domain is being changed
        self._writer = native.StreamWriter(sock, timeout=IO_TIMEOUT)
        self._reader = native.StreamReader(
            sock, Direction.FORWARD, dom, min_generation=generation, timeout=IO_TIMEOUT, idle_timeout=None
        )
        self._dirty = native.Bitmap(dom.pages)
        self._hashes = native.PageHashes(dom.pages) if verify else None

    # -- helpers -------------------------------------------------------------

    def _sync(self, control_id: ControlId, epoch: int, stats: Stats, verify: Verify | None = None) -> None:
        """Sends a sync point, then reports it."""
        sent = now_ns()  # before the write: the peer may act on it at once
        self._writer.control(control_id, self.generation, epoch)
        self._report(control_id, epoch, sent, stats, verify)

    def _report(
        self, control_id: ControlId, epoch: int, sent_ns: int, stats: Stats, verify: Verify | None = None
    ) -> None:
        metrics.SYNC_POINTS.labels(control_id.name).inc()
        self.sink(
            SyncPoint(self.domain, self.generation, epoch, control_id, Role.SECONDARY, sent_ns, stats, verify)
        )

    def _report_suspended(self, r: native.CheckpointResult) -> None:
        suspended = None
        if self.verify:  # what a torn checkpoint must leave
            suspended = Verify(
                checked=True, memory_hash=r.suspended_memory_hash, context_hash=r.suspended_context_hash
            )
        self._report(
            ControlId.SECONDARY_SUSPENDED, r.epoch, r.t_suspended_ns, Stats(dirty_b=r.dirty_b), suspended
        )

    def _digest(self) -> Verify:
        assert self._hashes is not None
        digest, _ = self.dom.page_hashes(self._hashes)
        return Verify(checked=True, memory_hash=digest.memory, context_hash=digest.context)

    def _send_verify(self, epoch: int) -> Verify:
        result = self._digest()
        self._writer.verify(
            epoch, native.DomainHash(result.memory_hash, result.context_hash), self.dom.pages, self._hashes
        )
        return result

    def _expect(self, kind: EventKind) -> native.Event:
        event = self._reader.next()
        if event.kind != kind:
            raise ProtocolError(f"expected {kind.name}, got {event.kind.name} (epoch {event.epoch})")
        if event.generation not in (0, self.generation):
            raise ProtocolError(
                f"record of generation {event.generation} on a generation {self.generation} stream"
            )
        return event

    def _applied(self, event: native.Event, start_ns: int, pause_start: int) -> Stats:
        """After a checkpoint applied: its own writes are not the guest's dirt."""
        self.dom.dirty_read_clear(self._dirty)
        metrics.PAGES_RECEIVED.inc(event.pages)
        metrics.BYTES_RECEIVED.labels(self.domain).inc(event.bytes)
        return Stats(
            pages=event.pages,
            bytes=event.bytes,
            last_seq=event.last_seq,
            pause_ns=now_ns() - pause_start,
            duration_ns=now_ns() - start_ns,
        )

    # -- the protocol --------------------------------------------------------

    def run(self) -> None:
        """Blocking; returns when the stream ends. Never raises."""
        try:
            self._writer.header(self.dom)
            self._reader.header()
            self._first_boot()
            while self._checkpoint():
                pass
        except native.NativeError as exc:
            self._ended(f"data stream ended: {exc}", exc.code)
        except ProtocolError as exc:
            self._ended(f"protocol error: {exc}", "protocol")
        except OSError as exc:
            self._ended(f"data connection failed: {exc}", "io")
        finally:
            self.state.finished = True
            # Nothing reads the connection any more: the primary must see it end now,
            # not when the pair is released (the owner, Replica, closes the socket).
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def _ended(self, message: str, code: object) -> None:
        metrics.STREAM_ERRORS.labels(str(getattr(code, "name", code))).inc()
        if isinstance(code, native.ErrorCode) and code == native.ErrorCode.STALE_GENERATION:
            metrics.FENCED.labels("record").inc()
        self.state.last_error = message
        level = logging.INFO if code == native.ErrorCode.EOF else logging.WARNING
        log.log(
            level,
            "%s generation %d: %s%s",
            self.domain,
            self.generation,
            message,
            " (staged checkpoint discarded; guest keeps its last whole checkpoint)"
            if self.state.suspended
            else "",
        )

    def _first_boot(self) -> None:
        start = now_ns()
        event = self._expect(EventKind.CHECKPOINT)
        with self.lock:
            self.dom.logdirty_enable()
            stats = self._applied(event, start, start)
            verify = self._send_verify(event.epoch) if self.verify else None
            self.state.epoch, self.state.last_seq = event.epoch, event.last_seq
            self._sync(ControlId.SECONDARY_READY, event.epoch, stats, verify)
            if self.netproxy is not None:  # as native/checkpoint.c does for the later ones
                self.netproxy.checkpoint_done(event.epoch, event.last_seq)
            self.dom.unpause()
        self._sync(ControlId.SECONDARY_RESUMED, event.epoch, stats)
        self.state.last_stats = stats
        log.info("%s: first boot applied (%d pages, epoch %d)", self.domain, event.pages, event.epoch)

    def _checkpoint(self) -> bool:
        event = self._reader.next()
        if event.kind == EventKind.END:
            return False
        if event.kind != EventKind.CONTROL or event.control_id != ControlId.CHECKPOINT_REQUEST:
            raise ProtocolError(f"expected CHECKPOINT_REQUEST, got {event.kind.name}")
        epoch = event.epoch
        if epoch <= self.state.epoch:
            raise ProtocolError(f"checkpoint epoch {epoch} is not above the last one, {self.state.epoch}")
        with self.lock:
            self.state.suspended = True
            try:
                r = native.secondary_checkpoint(
                    self._writer,
                    self._reader,
                    self.dom,
                    self._dirty,
                    generation=self.generation,
                    epoch=epoch,
                    page_hashes=self._hashes,
                    netproxy=self.netproxy,
                )
            except native.NativeError as exc:
                if exc.checkpoint is not None and exc.checkpoint.t_suspended_ns:
                    self._report_suspended(exc.checkpoint)  # it was sent: the record says where we stopped
                raise
            self.state.suspended = False
            stats = Stats.of(r)
            self.state.epoch, self.state.last_seq = epoch, r.last_seq
            self.state.checkpoints += 1
            self.state.last_stats = stats
        self._report_suspended(r)
        verify = None
        if self.verify:
            verify = Verify(checked=True, memory_hash=r.memory_hash, context_hash=r.context_hash)
        self._report(ControlId.SECONDARY_RESUMED, epoch, r.t_resumed_ns, stats, verify)
        metrics.DIRTY_PAGES.labels("B").observe(r.dirty_b)
        metrics.PAGES_RECEIVED.inc(r.pages)
        metrics.BYTES_RECEIVED.labels(self.domain).inc(r.bytes)
        metrics.CHECKPOINT_PAUSE.labels("secondary", self.domain).observe(stats.pause_ns / 1e9)
        metrics.CHECKPOINT_DURATION.labels("secondary", self.domain).observe(stats.duration_ns / 1e9)
        metrics.CHECKPOINTS.labels("secondary", "ok").inc()
        return True
