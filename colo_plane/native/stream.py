"""StreamWriter and StreamReader: the replication stream (docs/stream.md) over a connected socket."""

from __future__ import annotations

import socket
from typing import Any, Final

from colo_plane.native._args import timeout_ms, u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.abi import (
    MAX_PFNS_PER_RECORD,
    PAGE_SIZE,
    ControlId,
    Direction,
    DomainHash,
    Event,
    EventKind,
)
from colo_plane.native.bitmap import Bitmap
from colo_plane.native.domain import Domain, PageHashes, _ReaderHandle
from colo_plane.native.errors import _check

__all__ = ["CHECKPOINT_END_BYTES", "StreamReader", "StreamWriter", "page_data_bytes"]

# Stream bytes of a checkpoint's end: CHECKPOINT_INFO, then the empty CHECKPOINT.
CHECKPOINT_END_BYTES: Final = 8 + int(lib.CHECKPOINT_INFO_BODY) + 8 + int(lib.CHECKPOINT_BODY)


def page_data_bytes(pages: int) -> int:
    """Stream bytes of the PAGE_DATA records that carry `pages` pages."""
    records = -(-pages // MAX_PFNS_PER_RECORD)
    return pages * (8 + PAGE_SIZE) + records * 16


class StreamWriter:
    """Writes records to a connected socket (the socket stays the caller's)."""

    def __init__(self, sock: socket.socket, *, timeout: float | None = 30.0) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._timeout = timeout_ms(timeout)

    def header(self, dom: Domain) -> None:
        _check(lib.colo_write_header(self._fd, dom._p(), self._timeout))

    def pages(self, dom: Domain, pages: Bitmap) -> None:
        """PAGE_DATA for every pfn in pages, straight from guest memory."""
        _check(lib.colo_write_pages(self._fd, dom._p(), pages._ptr, self._timeout))

    def context(self, dom: Domain) -> None:
        _check(lib.colo_write_context(self._fd, dom._p(), self._timeout))

    def control(self, control_id: ControlId, generation: int, epoch: int) -> None:
        _check(
            lib.colo_write_control(
                self._fd,
                int(ControlId(control_id)),
                u64("generation", generation),
                u64("epoch", epoch),
                self._timeout,
            )
        )

    def dirty_list(self, pages: Bitmap) -> None:
        _check(lib.colo_write_dirty_list(self._fd, pages._ptr, self._timeout))

    def verify(
        self, epoch: int, digest: DomainHash, pages: int, page_hashes: PageHashes | None = None
    ) -> None:
        """VERIFY; with page_hashes the peer can name the pages that differ."""
        if page_hashes is not None and len(page_hashes) != pages:
            raise ValueError(f"{len(page_hashes)} page hashes for {pages} pages")
        _check(
            lib.colo_write_verify(
                self._fd,
                u64("epoch", epoch),
                digest.memory,
                digest.context,
                u64("pages", pages),
                page_hashes._buf if page_hashes else ffi.NULL,
                self._timeout,
            )
        )

    def checkpoint(self, generation: int, epoch: int, last_seq: int = 0) -> None:
        """The end of a checkpoint: CHECKPOINT_INFO with what it claims, then the empty CHECKPOINT."""
        _check(
            lib.colo_write_checkpoint(
                self._fd,
                u64("generation", generation),
                u64("epoch", epoch),
                u64("last_seq", last_seq),
                self._timeout,
            )
        )

    def end(self) -> None:
        _check(lib.colo_write_end(self._fd, self._timeout))

    def raw_record(self, rec_type: int, body: bytes) -> None:
        """Any record, zero-padded (tests and tools)."""
        if not 0 <= rec_type < 2**32:
            raise ValueError(f"record type {rec_type} is not a u32")
        _check(lib.colo_write_raw_record(self._fd, rec_type, body, len(body), self._timeout))


class StreamReader:
    """Reads and checks one direction of a stream into a domain (forward) or
    a dirty set (back channel).  Free it with close() (closing the domain
    closes it too).  A new reader drops what is staged on the domain."""

    __slots__ = ("_dirty", "_dom", "_handle", "_sock", "_verify")

    def __init__(
        self,
        sock: socket.socket,
        direction: Direction,
        dom: Domain,
        *,
        dirty_out: Bitmap | None = None,
        min_generation: int = 0,
        timeout: float | None = 30.0,
        idle_timeout: float | None = None,
    ) -> None:
        self._sock, self._dom, self._dirty = sock, dom, dirty_out
        self._verify: PageHashes | None = None
        self._handle = _ReaderHandle(None)
        out = ffi.new("colo_reader **")
        _check(
            lib.colo_reader_new(
                sock.fileno(),
                int(Direction(direction)),
                dom._p(),
                dirty_out._ptr if dirty_out is not None else ffi.NULL,
                u64("min_generation", min_generation),
                timeout_ms(timeout),
                timeout_ms(idle_timeout),
                out,
            )
        )
        self._handle.ptr = out[0]
        dom._readers.add(self._handle)

    def _p(self) -> Any:
        if self._handle.ptr is None:
            raise ValueError("stream reader is closed (or its domain is)")
        return self._handle.ptr

    def header(self) -> None:
        _check(lib.colo_reader_header(self._p()))

    def next(self) -> Event:
        """Reads records until one the caller must see (see EventKind).

        Raises StreamTimeout when idle_timeout passes with no record: the
        reader stays usable.  Any other error ends the stream; whatever
        it staged of a checkpoint is dropped, guest memory untouched."""
        ev = ffi.new("struct colo_event *")
        _check(lib.colo_reader_next(self._p(), ev))
        return Event(
            EventKind(ev.kind),
            int(ev.control_id),
            int(ev.generation),
            int(ev.epoch),
            int(ev.last_seq),
            int(ev.pages),
            int(ev.memory_hash),
            int(ev.context_hash),
            int(ev.bytes),
            bool(ev.page_hashes),
        )

    def set_verify_buffer(self, hashes: PageHashes | None) -> None:
        """Where VERIFY records' page hashes go (Event.page_hashes says when)."""
        if hashes is not None and len(hashes) != self._dom.pages:
            raise ValueError(f"{len(hashes)} page hashes for a domain of {self._dom.pages} pages")
        self._verify = hashes
        lib.colo_reader_set_verify_buffer(self._p(), hashes._buf if hashes is not None else ffi.NULL)

    def set_timeouts(self, timeout: float | None, idle_timeout: float | None) -> None:
        lib.colo_reader_set_timeouts(self._p(), timeout_ms(timeout), timeout_ms(idle_timeout))

    def set_min_generation(self, generation: int) -> None:
        lib.colo_reader_set_min_generation(self._p(), u64("generation", generation))

    @property
    def bytes_read(self) -> int:
        return int(lib.colo_reader_bytes(self._p()))

    def close(self) -> None:
        """Free the native reader now, dropping what it staged (the socket
        stays the caller's)."""
        self._handle.free()
        self._dom._readers.discard(self._handle)

    def __del__(self) -> None:
        self.close()
