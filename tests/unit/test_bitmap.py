"""Bitmap (native/bitmap.c) against a plain Python set model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colo_plane.native import Bitmap, ErrorCode, InvalidArgument, StreamError

# Sizes around word boundaries, plus arbitrary ones.
SIZES = st.one_of(st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129, 1000, 4097]), st.integers(1, 5000))


@st.composite
def size_and_sets(draw: st.DrawFn, n_sets: int = 2) -> tuple[int, list[set[int]]]:
    size = draw(SIZES)
    sets = [draw(st.sets(st.integers(0, size - 1), max_size=min(size, 300))) for _ in range(n_sets)]
    return size, sets


@settings(max_examples=150, deadline=None)
@given(size_and_sets(1))
def test_from_pfns_matches_model(data: tuple[int, list[set[int]]]) -> None:
    """from_pfns/count/to_pfns/`in` agree with a set: sorted, no duplicates, every bit."""
    size, (model,) = data
    bm = Bitmap.from_pfns(size, list(model) + list(model))  # duplicates are harmless
    assert bm.size == size
    assert bm.count() == len(model)
    assert bm.to_pfns() == sorted(model)
    for bit in {0, size - 1, *model, *(p + 1 for p in model if p + 1 < size)}:
        assert (bit in bm) == (bit in model)
    assert size not in bm
    assert -1 not in bm


@settings(max_examples=150, deadline=None)
@given(size_and_sets(2))
def test_union_matches_model(data: tuple[int, list[set[int]]]) -> None:
    """a | b and a |= b give the set union and leave the operands (for |) alone."""
    size, (sa, sb) = data
    a, b = Bitmap.from_pfns(size, sa), Bitmap.from_pfns(size, sb)
    d = a | b
    assert d.to_pfns() == sorted(sa | sb)
    assert d.count() == len(sa | sb)
    assert a.to_pfns() == sorted(sa)
    assert b.to_pfns() == sorted(sb)
    a |= b
    assert a == d
    assert a.copy() == d


@settings(max_examples=150, deadline=None)
@given(size_and_sets(1), st.data())
def test_next_set_matches_model(data: tuple[int, list[set[int]]], more: st.DataObject) -> None:
    """next_set(start) is the smallest member >= start, None past the last one."""
    size, (model,) = data
    bm = Bitmap.from_pfns(size, model)
    starts = {0, size - 1, size, size + 64, *model, *(p + 1 for p in model)}
    starts.add(more.draw(st.integers(0, size + 100)))
    for start in starts:
        expect = min((p for p in model if p >= start), default=None)
        assert bm.next_set(start) == expect, start
    # walking with next_set visits exactly the members, in order
    walked, bit = [], bm.next_set(0)
    while bit is not None:
        walked.append(bit)
        bit = bm.next_set(bit + 1)
    assert walked == sorted(model)


@pytest.mark.parametrize("size", [1, 64, 65, 1000])
def test_full_and_empty(size: int) -> None:
    """Every bit set counts size (no stray bits past the end); clear() empties."""
    bm = Bitmap.from_pfns(size, range(size))
    assert bm.count() == size
    assert bm.to_pfns() == list(range(size))
    assert bm == Bitmap.random(size, size, seed=3)
    bm.clear()
    assert bm.count() == 0
    assert bm.to_pfns() == []
    assert bm.next_set(0) is None


def test_set_pfns_out_of_range_changes_nothing() -> None:
    """A list with one pfn past the end raises PFN_RANGE (a StreamError) and sets no bit."""
    bm = Bitmap.from_pfns(100, [1, 2])
    with pytest.raises(StreamError) as info:
        bm.set_pfns([5, 6, 100, 7])
    assert info.value.code == ErrorCode.PFN_RANGE
    assert bm.to_pfns() == [1, 2]
    with pytest.raises(StreamError) as info:
        bm.set(100)
    assert info.value.code == ErrorCode.PFN_RANGE
    assert bm.to_pfns() == [1, 2]


def test_union_of_different_sizes_raises() -> None:
    """Bitmaps of different sizes cannot be merged, either way round."""
    a, b = Bitmap.from_pfns(64, [1]), Bitmap.from_pfns(65, [2])
    with pytest.raises(InvalidArgument) as info:
        _ = a | b
    assert info.value.code == ErrorCode.INVAL
    with pytest.raises(InvalidArgument):
        a |= b
    with pytest.raises(InvalidArgument):
        _ = b | a
    assert a.to_pfns() == [1]
    assert a != b


def test_zero_size_is_invalid() -> None:
    """A bitmap of no bits is refused."""
    with pytest.raises(InvalidArgument):
        Bitmap(0)


@settings(max_examples=40, deadline=None)
@given(SIZES, st.data(), st.integers(0, 2**64 - 1))
def test_random_is_exact_and_deterministic(size: int, data: st.DataObject, seed: int) -> None:
    """Bitmap.random(n, k, seed) sets exactly k bits, the same ones for the same seed."""
    k = data.draw(st.integers(0, size))
    a, b = Bitmap.random(size, k, seed), Bitmap.random(size, k, seed)
    assert a.count() == k
    assert a == b
    assert all(p < size for p in a.to_pfns())


def test_random_depends_on_seed() -> None:
    """Different seeds give different sets; asking for more bits than exist raises."""
    assert Bitmap.random(4096, 100, 1) != Bitmap.random(4096, 100, 2)
    with pytest.raises(InvalidArgument):
        Bitmap.random(10, 11, 0)


def test_huge_int_is_not_a_member() -> None:
    """`in` answers False for any int out of range, even one past 2^64 (no OverflowError)."""
    bm = Bitmap.from_pfns(64, [3])
    assert 2**64 not in bm
    assert 2**70 not in bm
    assert "3" not in bm
