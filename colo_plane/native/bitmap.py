"""Bitmap: a set of one domain's pfns in native memory (dirty sets A, B and D)."""

from __future__ import annotations

from collections.abc import Iterable

from colo_plane.native._args import u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.errors import _check

__all__ = ["Bitmap"]


class Bitmap:
    """A set of pfns of one domain, one bit a page."""

    __slots__ = ("_ptr",)

    def __init__(self, nbits: int) -> None:
        u64("nbits", nbits)
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
        _check(lib.colo_bitmap_fill_random(bm._ptr, u64("count", count), u64("seed", seed)))
        return bm

    @property
    def size(self) -> int:
        return int(lib.colo_bitmap_size(self._ptr))

    def count(self) -> int:
        return int(lib.colo_bitmap_count(self._ptr))

    def set(self, bit: int) -> None:
        _check(lib.colo_bitmap_set(self._ptr, u64("bit", bit)))

    def __contains__(self, bit: object) -> bool:
        if not isinstance(bit, int) or not 0 <= bit < self.size:
            return False
        return int(lib.colo_bitmap_test(self._ptr, bit)) == 1

    def clear(self) -> None:
        lib.colo_bitmap_clear_all(self._ptr)

    def set_pfns(self, pfns: Iterable[int]) -> None:
        """Set every pfn; a pfn out of range raises and changes nothing."""
        values = [u64("pfn", p) for p in pfns]
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
        bit = int(lib.colo_bitmap_next(self._ptr, u64("start", start)))
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
