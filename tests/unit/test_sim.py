"""The simulated domain (native/sim.c, native/domain.c)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from colo_plane.native import (
    PAGE_SIZE,
    BackendError,
    Bitmap,
    Domain,
    DomainType,
    ErrorCode,
    InvalidArgument,
    Pattern,
)

MakeDomain = Callable[..., Domain]
FAST = 50_000  # pages/s: plenty of writes in a short sleep


def run_for(dom: Domain, seconds: float) -> None:
    dom.unpause()
    time.sleep(seconds)
    dom.pause()


def test_new_domain_starts_paused(domains: MakeDomain) -> None:
    """A new sim domain is paused, of the sim type and size asked for."""
    dom = domains(pages=100, seed=1, rate=FAST)
    assert dom.paused
    assert dom.backend == "sim"
    assert dom.pages == 100
    assert dom.type == DomainType.SIM
    time.sleep(0.05)
    assert dom.sim_writes == 0


def test_paused_domain_dirties_nothing(domains: MakeDomain) -> None:
    """Paused (new, or after running), the log stays empty and the hash does not move."""
    dom = domains(pages=256, seed=1, rate=FAST)
    dom.logdirty_enable()
    h0 = dom.hash()
    time.sleep(0.2)
    assert dom.dirty_read_clear().count() == 0
    assert dom.hash() == h0
    assert dom.sim_writes == 0

    run_for(dom, 0.05)
    dom.dirty_read_clear()
    h1, writes = dom.hash(), dom.sim_writes
    assert writes > 0
    time.sleep(0.2)
    assert dom.dirty_read_clear().count() == 0
    assert dom.hash() == h1
    assert dom.sim_writes == writes


def test_running_domain_dirties_pages(domains: MakeDomain) -> None:
    """After unpause pages get dirty and both memory and context hashes change."""
    dom = domains(pages=256, seed=1, rate=FAST)
    dom.logdirty_enable()
    h0 = dom.hash()
    run_for(dom, 0.1)
    dirty = dom.dirty_read_clear()
    h1 = dom.hash()
    assert dirty.count() > 0
    assert h1.memory != h0.memory
    assert h1.context != h0.context


def test_dirty_pages_are_the_changed_pages(domains: MakeDomain) -> None:
    """Every page whose content changed is in the dirty log."""
    dom = domains(pages=2048, seed=4, rate=5000)
    dom.logdirty_enable()
    _, before = dom.page_hashes()
    run_for(dom, 0.1)
    _, after = dom.page_hashes()
    dirty = set(dom.dirty_read_clear().to_pfns())
    changed = {pfn for pfn, (x, y) in enumerate(zip(list(before), list(after), strict=True)) if x != y}
    assert changed
    assert changed <= dirty


def test_dirty_read_clear_is_read_and_clear(domains: MakeDomain) -> None:
    """The second read right after a pause is empty; out= is overwritten, not merged."""
    dom = domains(pages=512, seed=2, rate=FAST)
    dom.logdirty_enable()
    run_for(dom, 0.05)
    out = Bitmap.from_pfns(512, [0, 511])
    first = dom.dirty_read_clear(out)
    assert first is out
    assert first.count() > 0
    assert dom.dirty_read_clear().count() == 0


def test_dirty_log_needs_logdirty(domains: MakeDomain) -> None:
    """Reading the dirty log before enabling it, or into a wrong-sized bitmap, raises."""
    dom = domains(pages=64, seed=1)
    with pytest.raises(InvalidArgument):
        dom.dirty_read_clear()
    dom.logdirty_enable()
    with pytest.raises(InvalidArgument):
        dom.dirty_read_clear(Bitmap(65))


def test_different_seeds_dirty_different_pages(domains: MakeDomain) -> None:
    """Same rate, different seeds: A != B and neither contains the other."""
    a = domains(pages=8192, seed=1, rate=5000)
    b = domains(pages=8192, seed=2, rate=5000)
    for d in (a, b):
        d.logdirty_enable()
    a.unpause()
    b.unpause()
    time.sleep(0.15)
    a.pause()
    b.pause()
    sa, sb = set(a.dirty_read_clear().to_pfns()), set(b.dirty_read_clear().to_pfns())
    assert sa
    assert sb
    assert sa != sb
    assert not sa <= sb
    assert not sb <= sa


def test_initial_memory_depends_on_seed(domains: MakeDomain) -> None:
    """Two new domains are equal only when they share a seed."""
    a, b, c = (domains(pages=64, seed=s) for s in (1, 2, 1))
    assert a.hash().memory != b.hash().memory
    assert a.hash() == c.hash()


def test_context_round_trip(domains: MakeDomain) -> None:
    """set_context then context gives the blob back; a wrong length raises and changes nothing."""
    dom = domains(pages=16, seed=1)
    blob = dom.context()
    assert len(blob) > 0
    new = bytes(range(256)) * (len(blob) // 256) + bytes(len(blob) % 256)
    assert new != blob
    dom.set_context(new)
    assert dom.context() == new
    h = dom.hash()
    for bad in (b"", new[:-1], new + b"\0"):
        with pytest.raises(InvalidArgument) as info:
            dom.set_context(bad)
        assert info.value.code == ErrorCode.INVAL
    assert dom.context() == new
    assert dom.hash() == h


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"pages": 0}, "pages 0"),
        ({"pages": 10, "hot_percent": 101, "pattern": Pattern.HOTSET}, "hot_percent"),
        ({"pages": 10, "hot_pages": 11, "pattern": Pattern.HOTSET}, "hot set"),
        ({"pages": 10, "service_pages": 10}, "service pages"),
        ({"pages": 10, "service_pages": 11}, "service pages"),
        ({"pages": 10, "pattern": 7}, "Pattern"),
        ({"pages": 10, "rate": 10**12}, "rate"),
    ],
)
def test_bad_config_raises(config: dict[str, int], match: str) -> None:
    """Configurations that cannot work are refused at open (InvalidArgument is a ValueError)."""
    with pytest.raises(ValueError, match=match):
        Domain.sim(**config)


def test_vcpu_never_writes_service_pages(domains: MakeDomain) -> None:
    """With service_pages=N neither pattern dirties or changes a pfn below N."""
    for pattern in (Pattern.UNIFORM, Pattern.HOTSET):
        dom = domains(
            pages=256, seed=3, rate=FAST, service_pages=32, pattern=pattern, hot_pages=16, hot_percent=90
        )
        dom.logdirty_enable()
        _, before = dom.page_hashes()
        run_for(dom, 0.1)
        _, after = dom.page_hashes()
        dirty = dom.dirty_read_clear().to_pfns()
        assert len(dirty) > 100
        assert min(dirty) >= 32
        assert list(before)[:32] == list(after)[:32]


def test_write_page_needs_pause(domains: MakeDomain) -> None:
    """write_page on a running domain raises NOT_PAUSED and writes nothing."""
    dom = domains(pages=16, seed=1, rate=0)
    dom.unpause()
    before = dom.read_page(3)
    with pytest.raises(BackendError) as info:
        dom.write_page(3, b"\x55" * PAGE_SIZE)
    assert info.value.code == ErrorCode.NOT_PAUSED
    assert dom.read_page(3) == before


def test_read_write_page_round_trip(domains: MakeDomain) -> None:
    """A page written while paused reads back, changes only its own page hash."""
    dom = domains(pages=16, seed=1)
    _, before = dom.page_hashes()
    data = bytes((i * 7) & 0xFF for i in range(PAGE_SIZE))
    dom.write_page(9, data)
    assert dom.read_page(9) == data
    _, after = dom.page_hashes()
    assert [i for i in range(16) if list(before)[i] != list(after)[i]] == [9]
    with pytest.raises(ValueError, match="past the domain"):
        dom.write_page(16, data)
    with pytest.raises(ValueError, match="a page is"):
        dom.write_page(0, data[:-1])
    with pytest.raises(ValueError, match="past the domain"):
        dom.read_page(16)


def test_hotset_concentrates_writes(domains: MakeDomain) -> None:
    """HOTSET at 90%: most dirty pfns lie in the hot set (right after the service pages)."""
    service, hot = 8, 512
    dom = domains(
        pages=8192,
        seed=5,
        rate=5000,
        pattern=Pattern.HOTSET,
        hot_pages=hot,
        hot_percent=90,
        service_pages=service,
    )
    dom.logdirty_enable()
    run_for(dom, 0.2)
    dirty = dom.dirty_read_clear().to_pfns()
    in_hot = sum(service <= p < service + hot for p in dirty)
    assert len(dirty) > 100
    assert in_hot / len(dirty) > 0.6  # uniform would give about 512/8184 = 6%


def test_closed_domain_refuses_calls(domains: MakeDomain) -> None:
    """After close every call raises instead of touching freed memory; close is idempotent."""
    dom = domains(pages=16, seed=1)
    dom.close()
    dom.close()
    with pytest.raises(ValueError, match="closed"):
        dom.hash()
    with pytest.raises(ValueError, match="closed"):
        dom.pause()


def test_dirty_read_clear_loses_nothing_while_running(domains: MakeDomain) -> None:
    """Reads taken while the vCPU runs, plus the last one, cover every page that changed."""
    dom = domains(pages=1024, seed=6, rate=FAST)
    dom.logdirty_enable()
    _, before = dom.page_hashes()
    seen: set[int] = set()
    dom.unpause()
    for _ in range(20):
        seen |= set(dom.dirty_read_clear().to_pfns())
        time.sleep(0.005)
    dom.pause()
    seen |= set(dom.dirty_read_clear().to_pfns())
    _, after = dom.page_hashes()
    changed = {pfn for pfn, (x, y) in enumerate(zip(list(before), list(after), strict=True)) if x != y}
    assert len(changed) > 100
    assert changed <= seen
