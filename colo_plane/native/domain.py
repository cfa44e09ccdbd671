"""Domain: a guest behind a backend (sim or xen), with its page hashes and guest-service buffers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from colo_plane.native._args import u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.abi import MAX_CONTEXT_BYTES, PAGE_SIZE, DomainHash, Pattern
from colo_plane.native.bitmap import Bitmap
from colo_plane.native.errors import _check

__all__ = ["Domain", "PageHashes", "ReplyBuffer"]


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
        cfg.pages = u64("pages", pages)
        cfg.seed = u64("seed", seed)
        cfg.rate = u64("rate", rate)
        cfg.pattern = int(Pattern(pattern))
        cfg.hot_pages = u64("hot_pages", hot_pages)
        if not 0 <= hot_percent <= 100:
            raise ValueError(f"hot_percent must be 0..100, got {hot_percent}")
        cfg.hot_percent = hot_percent
        cfg.service_pages = u64("service_pages", service_pages)
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
        dom, seq = self._p(), u64("seq", seq)
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
        u64("pfn", pfn)
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
        self._n = u64("pages", pages)
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
