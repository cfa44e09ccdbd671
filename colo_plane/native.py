"""Typed wrapper over the native data plane (colo_plane._native._lib).

The only module that touches cffi's ``ffi``/``lib``.  It checks arguments
before calling C, turns every nonzero C return into an exception carrying
the C message, and owns every native buffer.  The blocking calls (stream
reads and writes, hashing) release the GIL, so callers run them in a
thread (``asyncio.to_thread``) to keep an event loop serving.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from colo_plane import __version__
from colo_plane._native._lib import ffi, lib

PAGE_SIZE: Final = int(lib.COLO_PAGE_SIZE)
MAX_PFNS_PER_RECORD: Final = int(lib.COLO_MAX_PFNS_PER_RECORD)
MAX_CONTEXT_BYTES: Final = int(lib.COLO_MAX_CONTEXT_BYTES)


class ErrorCode(enum.IntEnum):
    """C error codes (enum colo_error in native/colo.h)."""

    OK = 0
    NOMEM = 1
    INVAL = 2
    IO = 3
    TIMEOUT = 4
    EOF = 5
    TRUNCATED = 6
    BAD_MAGIC = 7
    BAD_ID = 8
    BAD_VERSION = 9
    BAD_OPTIONS = 10
    BAD_DOMAIN_HEADER = 11
    UNKNOWN_RECORD = 12
    RECORD_TOO_LONG = 13
    BAD_LENGTH = 14
    BAD_PADDING = 15
    PFN_RANGE = 16
    WRONG_DIRECTION = 17
    BAD_CONTROL_ID = 18
    STALE_GENERATION = 19
    PROTOCOL = 20
    NOT_PAUSED = 21
    BACKEND = 22
    NO_HYPERVISOR = 23
    NOT_BUILT = 24
    NOT_FOUND = 25
    PERMISSION = 26
    UNSUPPORTED = 27
    SERVICE = 28
    PAUSED = 29
    DUPLICATE = 30
    DISARMED = 31
    WRONG_GENERATION = 32


class RecordType(enum.IntEnum):
    """Stream record types (native/stream_format.h, docs/stream.md)."""

    END = 0x00
    PAGE_DATA = 0x01
    HVM_CONTEXT = 0x09
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    CHECKPOINT_STATE = 0x1005


class ControlId(enum.IntEnum):
    """COLO sync points (the seed's control ids; native/stream_format.h)."""

    CHECKPOINT_REQUEST = 0
    SECONDARY_SUSPENDED = 1
    SECONDARY_READY = 2
    SECONDARY_RESUMED = 3


class Direction(enum.IntEnum):
    FORWARD = 0  # primary -> secondary: state
    BACK = 1  # secondary -> primary: back channel


class EventKind(enum.IntEnum):
    CONTROL = 1
    DIRTY = 2
    VERIFY = 3
    CHECKPOINT = 4
    END = 5


class Pattern(enum.IntEnum):
    UNIFORM = 0
    HOTSET = 1


class DomainType(enum.IntEnum):
    X86_PV = 1
    X86_HVM = 2
    X86_PVH = 3
    SIM = 0x4353


def _check_build() -> None:
    """A stale or foreign build fails loudly at import, not later."""
    built = ffi.string(lib.colo_version()).decode()
    if built != __version__:
        raise ImportError(
            f"colo_plane native library is version {built}, the package is {__version__}: "
            "rebuild it (make build)"
        )
    for enum_type, prefix in ((ErrorCode, "COLO_E_"), (RecordType, "COLO_REC_"), (ControlId, "COLO_CTL_")):
        for member in enum_type:
            name = "COLO_OK" if member.name == "OK" else prefix + member.name
            if getattr(lib, name) != member.value:
                raise ImportError(f"{name} differs between native/*.h and colo_plane/native.py")


_check_build()


# ---- errors ----------------------------------------------------------------


class NativeError(Exception):
    """A C call failed; ``code`` says how, ``detail`` is the C message."""

    def __init__(self, code: int, detail: str) -> None:
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        self.detail = detail
        self.checkpoint: CheckpointResult | None = None  # a checkpoint call's steps up to the failure
        text = ffi.string(lib.colo_strerror(code)).decode()
        super().__init__(f"{text}: {detail}" if detail else text)


class InvalidArgument(NativeError, ValueError):
    """The caller passed something the C side refused."""


class StreamError(NativeError):
    """The peer sent a malformed or out-of-place record: drop the connection."""


class StreamClosed(NativeError):
    """The peer closed the connection, cleanly (EOF) or inside a record."""


class StreamTimeout(NativeError, TimeoutError):
    """The peer sent nothing within the timeout."""


class BackendError(NativeError):
    """The hypervisor backend failed or is not available here."""


class Disarmed(NativeError):
    """An armed checkpoint ended without starting (disarmed, unprotected, link lost)."""


_STREAM_CODES = frozenset(range(ErrorCode.BAD_MAGIC, ErrorCode.PROTOCOL + 1)) | {ErrorCode.WRONG_GENERATION}
_CLOSED_CODES = frozenset({ErrorCode.IO, ErrorCode.EOF, ErrorCode.TRUNCATED})
_BACKEND_CODES = frozenset(range(ErrorCode.NOT_PAUSED, ErrorCode.DUPLICATE + 1))


def _raise(code: int) -> None:
    detail = ffi.string(lib.colo_last_error()).decode(errors="replace")
    cls: type[NativeError]
    if code == ErrorCode.INVAL:
        cls = InvalidArgument
    elif code == ErrorCode.TIMEOUT:
        cls = StreamTimeout
    elif code in _STREAM_CODES:
        cls = StreamError
    elif code in _CLOSED_CODES:
        cls = StreamClosed
    elif code in _BACKEND_CODES:
        cls = BackendError
    elif code == ErrorCode.DISARMED:
        cls = Disarmed
    else:
        cls = NativeError
    raise cls(code, detail)


def _check(code: int) -> None:
    if code != 0:
        _raise(code)


def _u64(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer in 0..2^64-1, got {value!r}")
    return value


def _timeout_ms(timeout: float | None) -> int:
    """None waits for ever; otherwise whole milliseconds, at least 1."""
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
    return max(1, min(int(timeout * 1000), 2**31 - 1))


def version() -> str:
    return str(ffi.string(lib.colo_version()).decode())


def xen_built() -> bool:
    return bool(lib.colo_xen_built())


# ---- bitmaps ----------------------------------------------------------------


class Bitmap:
    """A set of pfns of one domain, one bit a page."""

    __slots__ = ("_ptr",)

    def __init__(self, nbits: int) -> None:
        _u64("nbits", nbits)
        out = ffi.new("colo_bitmap **")
        _check(lib.colo_bitmap_new(nbits, out))
        self._ptr = ffi.gc(out[0], lib.colo_bitmap_free)

    @classmethod
    def from_pfns(cls, nbits: int, pfns: Iterable[int]) -> Bitmap:
        bm = cls(nbits)
        bm.set_pfns(pfns)
        return bm

    @classmethod
    def full(cls, nbits: int) -> Bitmap:
        """Every bit set (a first boot sends every page)."""
        return cls.random(nbits, nbits, 0)

    @classmethod
    def random(cls, nbits: int, count: int, seed: int) -> Bitmap:
        """count distinct random bits, drawn from seed."""
        bm = cls(nbits)
        _check(lib.colo_bitmap_fill_random(bm._ptr, _u64("count", count), _u64("seed", seed)))
        return bm

    @property
    def size(self) -> int:
        return int(lib.colo_bitmap_size(self._ptr))

    def count(self) -> int:
        return int(lib.colo_bitmap_count(self._ptr))

    def set(self, bit: int) -> None:
        _check(lib.colo_bitmap_set(self._ptr, _u64("bit", bit)))

    def __contains__(self, bit: object) -> bool:
        if not isinstance(bit, int) or not 0 <= bit < self.size:
            return False
        return int(lib.colo_bitmap_test(self._ptr, bit)) == 1

    def clear(self) -> None:
        lib.colo_bitmap_clear_all(self._ptr)

    def set_pfns(self, pfns: Iterable[int]) -> None:
        """Set every pfn; a pfn out of range raises and changes nothing."""
        values = [_u64("pfn", p) for p in pfns]
        if values:
            _check(lib.colo_bitmap_set_pfns(self._ptr, ffi.new("uint64_t[]", values), len(values)))

    def to_pfns(self) -> list[int]:
        n = ffi.new("uint64_t *")
        count = self.count()
        buf = ffi.new("uint64_t[]", max(count, 1))
        _check(lib.colo_bitmap_to_pfns(self._ptr, buf, count, n))
        return list(ffi.unpack(buf, int(n[0])))

    def next_set(self, start: int = 0) -> int | None:
        """First set bit >= start, or None."""
        bit = int(lib.colo_bitmap_next(self._ptr, _u64("start", start)))
        return None if bit >= self.size else bit

    def __or__(self, other: Bitmap) -> Bitmap:
        out = Bitmap(self.size)
        _check(lib.colo_bitmap_union(out._ptr, self._ptr, other._ptr))
        return out

    def __ior__(self, other: Bitmap) -> Bitmap:
        _check(lib.colo_bitmap_union(self._ptr, self._ptr, other._ptr))
        return self

    def copy(self) -> Bitmap:
        out = Bitmap(self.size)
        _check(lib.colo_bitmap_copy(out._ptr, self._ptr))
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bitmap) and bool(lib.colo_bitmap_equal(self._ptr, other._ptr))

    def __hash__(self) -> int:  # mutable: not hashable
        raise TypeError("Bitmap is mutable and not hashable")

    def __repr__(self) -> str:
        return f"Bitmap(size={self.size}, count={self.count()})"


# ---- domains ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainHash:
    """xxh64 over every page's hash, and over the vCPU context."""

    memory: int
    context: int


class _ReaderHandle:
    """A native reader, held by its StreamReader and by its Domain: whichever
    goes first frees it, so the C reader (which reads its domain when freed)
    never outlives the domain, whatever order the garbage collector takes."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: Any) -> None:
        self.ptr: Any = ptr

    def free(self) -> None:
        ptr, self.ptr = self.ptr, None  # taken before the call (which drops the GIL): freed once
        if ptr is not None:
            lib.colo_reader_free(ptr)


class Domain:
    """A guest domain behind a backend (sim or xen).  Close it when done.

    A new sim domain starts paused, as ``xl create -p`` does.
    """

    __slots__ = ("_ptr", "_readers")

    def __init__(self, ptr: Any) -> None:
        self._ptr = ptr
        self._readers: set[_ReaderHandle] = set()

    @classmethod
    def sim(
        cls,
        *,
        pages: int,
        seed: int = 0,
        rate: int = 0,
        pattern: Pattern = Pattern.UNIFORM,
        hot_pages: int = 0,
        hot_percent: int = 0,
        service_pages: int = 0,
        divergence: float = 0.0,
    ) -> Domain:
        cfg = ffi.new("struct colo_sim_config *")
        cfg.pages = _u64("pages", pages)
        cfg.seed = _u64("seed", seed)
        cfg.rate = _u64("rate", rate)
        cfg.pattern = int(Pattern(pattern))
        cfg.hot_pages = _u64("hot_pages", hot_pages)
        if not 0 <= hot_percent <= 100:
            raise ValueError(f"hot_percent must be 0..100, got {hot_percent}")
        cfg.hot_percent = hot_percent
        cfg.service_pages = _u64("service_pages", service_pages)
        if not 0.0 <= divergence <= 1.0:
            raise ValueError(f"divergence must be a probability in 0..1, got {divergence}")
        cfg.divergence_ppm = round(divergence * 1_000_000)
        out = ffi.new("colo_domain **")
        _check(lib.colo_sim_open(cfg, out))
        return cls(out[0])

    @classmethod
    def xen(cls, name: str) -> Domain:
        """Open a Xen domain by name or decimal domid."""
        if not name or "\0" in name:
            raise ValueError("xen domain name must be a non-empty string")
        out = ffi.new("colo_domain **")
        _check(lib.colo_xen_open(name.encode(), out))
        return cls(out[0])

    def _p(self) -> Any:
        if self._ptr is None:
            raise ValueError("domain is closed")
        return self._ptr

    def close(self) -> None:
        """Frees the domain, its readers first (they are closed from now on)."""
        if self._ptr is not None:
            for handle in list(self._readers):
                handle.free()
            self._readers.clear()
            lib.colo_domain_close(self._ptr)
            self._ptr = None

    def __enter__(self) -> Domain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def backend(self) -> str:
        return str(ffi.string(lib.colo_domain_backend(self._p())).decode())

    @property
    def pages(self) -> int:
        return int(lib.colo_domain_pages(self._p()))

    @property
    def type(self) -> int:
        return int(lib.colo_domain_type(self._p()))

    @property
    def paused(self) -> bool:
        return bool(lib.colo_domain_is_paused(self._p()))

    def present(self) -> bool:
        """False once the domain is gone (destroyed, crashed): it holds no copy of the guest."""
        out = ffi.new("int *")
        _check(lib.colo_domain_present(self._p(), out))
        return bool(out[0])

    def sim_destroy(self) -> None:
        """Sim only: destroy the guest, as ``xl destroy`` does (tests lose a guest with it)."""
        _check(lib.colo_sim_destroy(self._p()))

    @property
    def sim_writes(self) -> int:
        """Page writes the sim vCPU has made (0 on other backends)."""
        return int(lib.colo_sim_writes(self._p()))

    def serve(self, seq: int, request: bytes, reply_buf: ReplyBuffer | None = None) -> bytes:
        """One request line to the guest's network endpoint (sim: its key-value
        service), its reply line back.  Raises BackendError(PAUSED) while the
        guest is paused, BackendError(UNSUPPORTED) on a domain without one."""
        buf = reply_buf or ReplyBuffer()
        n = ffi.new("uint64_t *")
        dom, seq = self._p(), _u64("seq", seq)
        _check(lib.colo_domain_serve(dom, seq, request, len(request), buf._buf, buf.size, n))
        return bytes(ffi.buffer(buf._buf, int(n[0])))

    def service_seq(self) -> int:
        """The highest request sequence number the guest has processed
        (BackendError(UNSUPPORTED) on a domain without a network endpoint)."""
        seq = ffi.new("uint64_t *")
        _check(lib.colo_domain_served_seq(self._p(), seq))
        return int(seq[0])

    def sim_dirty(self, pages: Bitmap) -> None:
        """Sim only: the guest writes each page of pages once, now."""
        _check(lib.colo_sim_dirty(self._p(), pages._ptr))

    def pause(self) -> None:
        _check(lib.colo_domain_pause(self._p()))

    def unpause(self) -> None:
        _check(lib.colo_domain_unpause(self._p()))

    def logdirty_enable(self) -> None:
        _check(lib.colo_domain_logdirty_enable(self._p()))

    def logdirty_disable(self) -> None:
        _check(lib.colo_domain_logdirty_disable(self._p()))

    def dirty_read_clear(self, out: Bitmap | None = None) -> Bitmap:
        """Read and clear the dirty log in one step; returns the dirty set."""
        bm = out if out is not None else Bitmap(self.pages)
        _check(lib.colo_domain_dirty_read_clear(self._p(), bm._ptr))
        return bm

    def context(self) -> bytes:
        buf = ffi.new("uint8_t[]", MAX_CONTEXT_BYTES)
        n = ffi.new("uint64_t *")
        _check(lib.colo_domain_context_get(self._p(), buf, MAX_CONTEXT_BYTES, n))
        return bytes(ffi.buffer(buf, int(n[0])))

    def set_context(self, blob: bytes) -> None:
        _check(lib.colo_domain_context_set(self._p(), blob, len(blob)))

    def _pfn(self, pfn: int) -> int:
        _u64("pfn", pfn)
        if pfn >= self.pages:
            raise ValueError(f"pfn {pfn} past the domain's {self.pages} pages")
        return pfn

    def read_page(self, pfn: int) -> bytes:
        buf = ffi.new("uint8_t[]", PAGE_SIZE)
        _check(lib.colo_domain_read_page(self._p(), self._pfn(pfn), buf))
        return bytes(ffi.buffer(buf, PAGE_SIZE))

    def write_page(self, pfn: int, data: bytes) -> None:
        """Write one page (tests and tools); the domain must be paused."""
        if len(data) != PAGE_SIZE:
            raise ValueError(f"a page is {PAGE_SIZE} bytes, got {len(data)}")
        _check(lib.colo_domain_write_page(self._p(), self._pfn(pfn), data))

    def staged(self) -> tuple[int, bool]:
        """(pages, whether a context is) staged for a checkpoint and not
        applied: (0, False) between checkpoints and after any failure."""
        pages, context = ffi.new("uint64_t *"), ffi.new("int *")
        lib.colo_domain_staged(self._p(), pages, context)
        return int(pages[0]), bool(context[0])

    def hash(self) -> DomainHash:
        mem, ctx = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        _check(lib.colo_domain_hash(self._p(), mem, ctx, ffi.NULL))
        return DomainHash(int(mem[0]), int(ctx[0]))

    def page_hashes(self, out: PageHashes | None = None) -> tuple[DomainHash, PageHashes]:
        """The domain hash and one hash a page (to name pages that differ)."""
        hashes = out if out is not None else PageHashes(self.pages)
        if len(hashes) != self.pages:
            raise ValueError(f"{len(hashes)} page hashes for a domain of {self.pages} pages")
        mem, ctx = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        _check(lib.colo_domain_hash(self._p(), mem, ctx, hashes._buf))
        return DomainHash(int(mem[0]), int(ctx[0])), hashes


class ReplyBuffer:
    """Room for one guest service reply (reuse it on a hot path)."""

    __slots__ = ("_buf", "size")

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._buf = ffi.new("uint8_t[]", size)


class PageHashes:
    """One xxh64 a page, in native memory (compared in C, not in Python)."""

    __slots__ = ("_buf", "_n")

    def __init__(self, pages: int) -> None:
        self._n = _u64("pages", pages)
        self._buf = ffi.new("uint64_t[]", max(pages, 1))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, pfn: int) -> int:
        if not 0 <= pfn < self._n:
            raise IndexError(pfn)
        return int(self._buf[pfn])

    def __iter__(self) -> Iterator[int]:
        return iter(ffi.unpack(self._buf, self._n))

    def diff(self, other: PageHashes, limit: int = 64) -> tuple[int, list[int]]:
        """(how many pages differ, the first `limit` of them)."""
        if len(other) != self._n:
            raise ValueError(f"cannot compare hashes of {self._n} and {len(other)} pages")
        out = ffi.new("uint64_t[]", max(limit, 1))
        count = ffi.new("uint64_t *")
        lib.colo_hashes_diff(self._buf, other._buf, self._n, out, limit, count)
        return int(count[0]), list(ffi.unpack(out, min(limit, int(count[0]))))


# ---- the stream -------------------------------------------------------------


def page_data_bytes(pages: int) -> int:
    """Stream bytes of the PAGE_DATA records that carry `pages` pages."""
    records = -(-pages // MAX_PFNS_PER_RECORD)
    return pages * (8 + PAGE_SIZE) + records * 16


@dataclass(frozen=True, slots=True)
class Event:
    """What StreamReader.next() read: one sync point, dirty list, verify,
    applied checkpoint or end of stream."""

    kind: EventKind
    control_id: int
    generation: int
    epoch: int
    last_seq: int
    pages: int
    memory_hash: int
    context_hash: int
    bytes: int
    page_hashes: bool


class StreamWriter:
    """Writes records to a connected socket (the socket stays the caller's)."""

    def __init__(self, sock: socket.socket, *, timeout: float | None = 30.0) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._timeout = _timeout_ms(timeout)

    def header(self, dom: Domain) -> None:
        _check(lib.colo_write_header(self._fd, dom._p(), self._timeout))

    def pages(self, dom: Domain, pages: Bitmap) -> None:
        """PAGE_DATA for every pfn in pages, straight from guest memory."""
        _check(lib.colo_write_pages(self._fd, dom._p(), pages._ptr, self._timeout))

    def pages_cut(self, dom: Domain, pages: Bitmap, cut_after: int) -> None:
        """Test hook: as pages(), but stop after cut_after bytes, mid-record."""
        _check(
            lib.colo_write_pages_cut(
                self._fd, dom._p(), pages._ptr, _u64("cut_after", cut_after), self._timeout
            )
        )

    def context(self, dom: Domain) -> None:
        _check(lib.colo_write_context(self._fd, dom._p(), self._timeout))

    def control(self, control_id: ControlId, generation: int, epoch: int) -> None:
        _check(
            lib.colo_write_control(
                self._fd,
                int(ControlId(control_id)),
                _u64("generation", generation),
                _u64("epoch", epoch),
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
                _u64("epoch", epoch),
                digest.memory,
                digest.context,
                _u64("pages", pages),
                page_hashes._buf if page_hashes else ffi.NULL,
                self._timeout,
            )
        )

    def checkpoint(self, generation: int, epoch: int, last_seq: int = 0) -> None:
        _check(
            lib.colo_write_checkpoint(
                self._fd,
                _u64("generation", generation),
                _u64("epoch", epoch),
                _u64("last_seq", last_seq),
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
                _u64("min_generation", min_generation),
                _timeout_ms(timeout),
                _timeout_ms(idle_timeout),
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
        lib.colo_reader_set_timeouts(self._p(), _timeout_ms(timeout), _timeout_ms(idle_timeout))

    def set_min_generation(self, generation: int) -> None:
        lib.colo_reader_set_min_generation(self._p(), _u64("generation", generation))

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


# ---- one checkpoint a call --------------------------------------------------------


@dataclass(frozen=True)
class CheckpointResult:
    """What one side's checkpoint call did (struct colo_ckpt_result)."""

    epoch: int
    t_request_ns: int
    t_suspended_ns: int
    t_resumed_ns: int
    pause_ns: int
    dirty_a: int
    dirty_b: int
    dirty_d: int
    pages: int
    bytes: int
    last_seq: int
    memory_hash: int
    context_hash: int
    suspended_memory_hash: int
    suspended_context_hash: int
    peer_memory_hash: int
    peer_context_hash: int
    peer_page_hashes: int


def _ckpt_options(generation: int, epoch: int, page_hashes: PageHashes | None) -> Any:
    opt = ffi.new("struct colo_ckpt_options *")
    opt.generation = _u64("generation", generation)
    opt.epoch = _u64("epoch", epoch)
    opt.page_hashes = page_hashes._buf if page_hashes is not None else ffi.NULL
    return opt


def _ckpt_outcome(code: int, out: Any) -> CheckpointResult:
    """The result; on failure the exception carries the steps done (which
    sync points were sent, and when) as .checkpoint."""
    result = CheckpointResult(*(int(getattr(out, f)) for f in CheckpointResult.__dataclass_fields__))
    try:
        _check(code)
    except NativeError as exc:
        exc.checkpoint = result
        raise
    return result


def primary_checkpoint(
    writer: StreamWriter,
    reader: StreamReader,
    dom: Domain,
    scratch: tuple[Bitmap, Bitmap, Bitmap],
    *,
    generation: int,
    epoch: int,
    page_hashes: PageHashes | None = None,
    send_only_a: bool = False,
    cut_after: int = 0,
    proxy: Proxy | None = None,
) -> CheckpointResult:
    """The primary's side of one checkpoint; returns at SECONDARY_RESUMED.
    scratch is (A, B, D): B must be the reader's dirty_out.  With proxy, the
    replies the checkpoint covers are released as SECONDARY_RESUMED arrives."""
    a, b, d = scratch
    if b is not reader._dirty:
        raise ValueError("B must be the bitmap the reader merges the dirty lists into")
    opt = _ckpt_options(generation, epoch, page_hashes)
    opt.send_only_a = int(send_only_a)
    opt.cut_after = _u64("cut_after", cut_after)
    opt.proxy = proxy._p() if proxy is not None else ffi.NULL
    out = ffi.new("struct colo_ckpt_result *")
    code = lib.colo_primary_checkpoint(
        writer._fd, reader._p(), dom._p(), a._ptr, b._ptr, d._ptr, opt, writer._timeout, out
    )
    return _ckpt_outcome(code, out)


def secondary_checkpoint(
    writer: StreamWriter,
    reader: StreamReader,
    dom: Domain,
    dirty: Bitmap,
    *,
    generation: int,
    epoch: int,
    page_hashes: PageHashes | None = None,
) -> CheckpointResult:
    """The secondary's side, once CHECKPOINT_REQUEST of epoch was read;
    returns once SECONDARY_RESUMED is sent."""
    out = ffi.new("struct colo_ckpt_result *")
    opt = _ckpt_options(generation, epoch, page_hashes)
    code = lib.colo_secondary_checkpoint(
        writer._fd, reader._p(), dom._p(), dirty._ptr, opt, writer._timeout, out
    )
    return _ckpt_outcome(code, out)


# ---- the COLO proxy -----------------------------------------------------------


MAX_POLL_US: Final = 10_000
PROXY_OUTPUT_MAX: Final = int(lib.COLO_PROXY_OUTPUT_MAX)  # a client's unsent output, by default
PROXY_OUTPUT_MIN: Final = int(lib.COLO_PROXY_OUTPUT_MIN)


def _poll_us(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_POLL_US:
        raise ValueError(f"poll window must be 0..{MAX_POLL_US} microseconds, got {value!r}")
    return value


class ProxyEventKind(enum.IntEnum):
    HOLD = 1  # a reply is held: ask for a checkpoint including seq
    RELEASE = 2  # a held reply left: checkpoint epoch resumed
    LINK_LOST = 3  # the link to the secondary failed; output is held


PROXY_REASONS: Final = {1: "mismatch", 2: "timeout"}


@dataclass(frozen=True)
class ProxyEvent:
    kind: ProxyEventKind
    reason: str  # HOLD: "mismatch" or "timeout"
    seq: int
    epoch: int
    t_ns: int  # CLOCK_MONOTONIC
    code: int
    detail: str


@dataclass(frozen=True)
class ProxyStats:
    requests: int = 0
    held: int = 0
    mismatches: int = 0
    timeouts: int = 0
    clients: int = 0
    clients_refused: int = 0
    last_seq: int = 0
    covered: int = 0
    events_lost: int = 0
    backpressure: int = 0  # times a client was paused: its unsent output reached the bound
    clients_paused: int = 0  # now
    output_bytes: int = 0  # reply bytes owed to clients now, written to no socket yet


class ArmWhy(enum.IntEnum):
    """What started an armed checkpoint."""

    DIVERGENCE = 1  # a reply was held
    TIMER = 2  # the arm's time ran out
    FIRED = 3  # fire(): the coordinator wants it now


@dataclass(frozen=True)
class ArmResult:
    why: ArmWhy
    reason: str  # DIVERGENCE: "mismatch" or "timeout" of the newest held reply
    seq: int  # ... and its seq
    t_ns: int  # CLOCK_MONOTONIC when the wait ended


class Proxy:
    """The primary's COLO proxy (native/proxy.c): a C thread serves the
    clients of listener with dom's guest service and compares replies with
    the secondary's.  It takes the sockets over; close() stops it.  A client
    whose unsent output reaches output_max bytes is read no further until it
    has read half of it (docs/proxy.md).  A domain whose backend has no guest
    network hook is refused: BackendError(UNSUPPORTED)."""

    __slots__ = ("_dom", "_events", "_ptr")

    def __init__(
        self,
        dom: Domain,
        listener: socket.socket,
        reply_timeout: float,
        *,
        poll_us: int = 0,
        output_max: int = PROXY_OUTPUT_MAX,
    ) -> None:
        ms = round(reply_timeout * 1000)
        if not 0 < ms < 2**32:
            raise ValueError(f"reply timeout must be positive, got {reply_timeout}")
        if (
            not isinstance(output_max, int)
            or isinstance(output_max, bool)
            or not (PROXY_OUTPUT_MIN <= output_max < 2**32)
        ):
            raise ValueError(f"output bound must be {PROXY_OUTPUT_MIN} B to under 4 GiB, got {output_max!r}")
        out = ffi.new("colo_proxy **")
        fd = listener.fileno()
        _check(lib.colo_proxy_new(dom._p(), fd, ms, _poll_us(poll_us), output_max, out))
        listener.detach()  # the proxy owns it now
        self._dom = dom  # the guest must outlive the thread serving it
        self._ptr: Any = out[0]
        self._events = ffi.new("struct colo_proxy_event[]", 256)

    def _p(self) -> Any:
        if self._ptr is None:
            raise ValueError("proxy is closed")
        return self._ptr

    @property
    def event_fd(self) -> int:
        """Readable when events are queued."""
        return int(lib.colo_proxy_event_fd(self._p()))

    def attach(self, link: socket.socket) -> None:
        """A secondary in sync: compare its replies from now on."""
        _check(lib.colo_proxy_attach(self._p(), link.fileno()))
        link.detach()

    def detach(self) -> None:
        lib.colo_proxy_detach(self._p())

    def unprotect(self) -> int:
        """Replies go straight out; returns how many held ones were released."""
        n = ffi.new("uint64_t *")
        lib.colo_proxy_unprotect(self._p(), n)
        return int(n[0])

    def checkpoint_done(self, epoch: int, last_seq: int) -> None:
        lib.colo_proxy_checkpoint_done(self._p(), _u64("epoch", epoch), _u64("last_seq", last_seq))

    def await_divergence(self, token: int, timeout: float) -> ArmResult:
        """Blocks (GIL released) until a reply is held, fire(token) or timeout
        seconds pass; raises Disarmed when the wait ends without a checkpoint."""
        out = ffi.new("struct colo_arm_result *")
        _check(lib.colo_proxy_await(self._p(), _u64("token", token), _timeout_ms(timeout), out))
        return ArmResult(ArmWhy(out.why), PROXY_REASONS.get(int(out.reason), ""), int(out.seq), int(out.t_ns))

    def fire(self, token: int) -> None:
        """The armed checkpoint of token starts now (a later token is not touched)."""
        lib.colo_proxy_fire(self._p(), _u64("token", token))

    def disarm(self, token: int) -> None:
        """The armed checkpoint of token ends without starting, unless it already started."""
        lib.colo_proxy_disarm(self._p(), _u64("token", token))

    def events(self) -> list[ProxyEvent]:
        out: list[ProxyEvent] = []
        n = ffi.new("uint64_t *")
        while True:
            lib.colo_proxy_events(self._p(), self._events, 256, n)
            for i in range(int(n[0])):
                ev = self._events[i]
                out.append(
                    ProxyEvent(
                        ProxyEventKind(ev.kind),
                        PROXY_REASONS.get(int(ev.reason), ""),
                        int(ev.seq),
                        int(ev.epoch),
                        int(ev.t_ns),
                        int(ev.code),
                        ffi.string(ev.detail).decode(errors="replace"),
                    )
                )
            if n[0] < 256:
                return out

    def stats(self) -> ProxyStats:
        st = ffi.new("struct colo_proxy_stats *")
        lib.colo_proxy_stats(self._p(), st)
        return ProxyStats(*(int(getattr(st, f)) for f in ProxyStats.__dataclass_fields__))

    def close(self) -> None:
        """Stops the thread, closes every client and the link."""
        if self._ptr is not None:
            lib.colo_proxy_free(self._ptr)
            self._ptr = None


@dataclass(frozen=True)
class MirrorResult:
    finished: bool
    code: int  # why it ended (EOF: the primary closed the link)
    served: int
    skipped: int  # requests a checkpoint already carried
    detail: str


class Mirror:
    """The secondary's end of the proxy (native/mirror.c): a C thread runs
    the primary's requests on dom.  Takes the link over; close() stops it.
    Refused as Proxy is on a domain without a guest network hook."""

    __slots__ = ("_dom", "_ptr")

    def __init__(self, dom: Domain, link: socket.socket, *, poll_us: int = 0) -> None:
        out = ffi.new("colo_mirror **")
        _check(lib.colo_mirror_new(dom._p(), link.fileno(), _poll_us(poll_us), out))
        link.detach()
        self._dom = dom
        self._ptr: Any = out[0]

    @property
    def done_fd(self) -> int:
        """Readable once the link ended."""
        if self._ptr is None:
            raise ValueError("mirror is closed")
        return int(lib.colo_mirror_done_fd(self._ptr))

    def result(self) -> MirrorResult:
        if self._ptr is None:
            raise ValueError("mirror is closed")
        finished = ffi.new("int *")
        served, skipped = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        detail = ffi.new("char[]", 256)
        code = lib.colo_mirror_result(self._ptr, finished, served, skipped, detail, 256)
        return MirrorResult(
            bool(finished[0]),
            int(code),
            int(served[0]),
            int(skipped[0]),
            ffi.string(detail).decode(errors="replace"),
        )

    def close(self) -> None:
        if self._ptr is not None:
            lib.colo_mirror_free(self._ptr)
            self._ptr = None


# ---- raw baseline -----------------------------------------------------------


class RawBuffer:
    """A native buffer for the raw TCP baseline of the benches, filled with
    distinct data: every page is real memory, as guest pages are, and page
    faults are not timed."""

    __slots__ = ("_buf", "size")

    def __init__(self, size: int) -> None:
        self.size = _u64("size", size)
        self._buf = ffi.new("uint8_t[]", size)
        lib.colo_raw_fill(self._buf, size, 0x9E3779B97F4A7C15)


def raw_send(sock: socket.socket, buf: RawBuffer, total: int, chunk: int) -> None:
    """Send total bytes in chunk-sized writes, walking through buf."""
    _check(lib.colo_raw_send(sock.fileno(), buf._buf, buf.size, _u64("total", total), _u64("chunk", chunk)))


def raw_recv(sock: socket.socket, buf: RawBuffer, total: int, chunk: int) -> None:
    """Receive total bytes in chunk-sized reads, walking through buf."""
    _check(lib.colo_raw_recv(sock.fileno(), buf._buf, buf.size, _u64("total", total), _u64("chunk", chunk)))
