"""The Xen backend against a real hypervisor (the lab's boot 1: Xen 4.17 with
shadow paging under QEMU).  dom0-init creates, before this runs:

  pvh-src  PVH guest, running tests/xen/guest-init (writes COLO-LAB-<i>-)
  pv-src   PV guest, the same
  pvh-dst  PVH guest of the same size, created paused, never run: copy target
  pv-dst   PV guest of the same size, created paused, never run
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from xenlab_util import MODE, figure, note

pytestmark = pytest.mark.skipif(MODE != "main", reason="lab boot 1 only")

if MODE == "main":
    from colo_plane import native
    from colo_plane.native import BackendError, Bitmap, Domain, DomainType, ErrorCode, NativeError

PATTERN = re.compile(rb"COLO-LAB-(\d+)-")
SOURCES = ["pvh-src", "pv-src"]


_NAMES: dict[int, str] = {}  # id(Domain) -> the name it was opened by (Domain has __slots__)


@pytest.fixture(params=SOURCES)
def src(request: pytest.FixtureRequest) -> Iterator[Domain]:
    dom = Domain.xen(request.param)
    _NAMES[id(dom)] = request.param
    try:
        yield dom
    finally:
        _NAMES.pop(id(dom), None)
        try:
            dom.logdirty_disable()
            dom.unpause()
        finally:
            dom.close()


@pytest.fixture
def pvh_pair() -> Iterator[tuple[Domain, Domain]]:
    src, dst = Domain.xen("pvh-src"), Domain.xen("pvh-dst")
    try:
        yield src, dst
    finally:
        src.logdirty_disable()
        src.unpause()
        src.close()
        dst.close()  # stays paused: it was never run


def iterations(dom: Domain, pfns: list[int]) -> dict[int, int]:
    """pfn -> newest guest iteration number found in the page."""
    found = {}
    for pfn in pfns:
        nums = [int(m) for m in PATTERN.findall(dom.read_page(pfn))]
        if nums:
            found[pfn] = max(nums)
    return found


def dirty_window(dom: Domain, seconds: float) -> Bitmap:
    """Run the guest for `seconds` from a clean log, pause, read-and-clear."""
    dom.dirty_read_clear()
    dom.unpause()
    time.sleep(seconds)
    dom.pause()
    return dom.dirty_read_clear()


# ---- opening ---------------------------------------------------------------


def test_open_by_name_and_domid(src: Domain) -> None:
    name = name_of(src)
    domid = subprocess.run(["xl", "domid", name], check=True, capture_output=True, text=True).stdout.strip()
    again = Domain.xen(domid)
    try:
        assert src.backend == again.backend == "xen"
        assert src.pages == again.pages and src.type == again.type
        assert src.type == (DomainType.X86_PVH if name.startswith("pvh") else DomainType.X86_PV)
        assert src.pages >= 128 * 256, "a 128 MiB guest has at least 32768 pages"
    finally:
        again.close()
    figure(f"{name}: pages (max gpfn + 1 / p2m size)", src.pages, "pages")


# ---- pause stops the guest ---------------------------------------------------


def test_pause_stops_the_guest(src: Domain) -> None:
    src.logdirty_enable()
    time.sleep(0.5)
    src.pause()
    src.dirty_read_clear()  # what the guest wrote before the pause
    first, second = src.dirty_read_clear(), src.dirty_read_clear()
    h1 = src.hash().memory
    time.sleep(1.0)
    h2 = src.hash().memory
    assert first.count() == 0 and second.count() == 0, (first, second)
    assert h1 == h2, "the memory hash of a paused domain changed"
    assert src.dirty_read_clear().count() == 0
    src.unpause()
    after = Bitmap(src.pages)
    for _ in range(5):  # a starved guest (TCG on a busy host) may need more than 1 s
        time.sleep(1.0)
        after |= src.dirty_read_clear()
        if after.count() > 100:
            break
    src.pause()
    assert after.count() > 100, f"after unpause the guest dirtied only {after.count()} pages"
    note(
        f"{name_of(src)} paused: 2 empty CLEANs, memory hash {h1:#x} unchanged over 1 s "
        f"({src.pages} pages); "
        f"after unpause: {after.count()} dirty"
    )


# ---- the dirty bitmap is right -------------------------------------------------


def test_dirty_bitmap_is_right(src: Domain) -> None:
    src.logdirty_enable()
    time.sleep(0.5)
    src.pause()
    before = src.dirty_read_clear()
    n0 = max(iterations(src, before.to_pfns()).values(), default=0)
    h0 = src.page_hashes()[1]
    # Run the guest until it has written a newer iteration (under TCG on a
    # busy host a 1.5 s window can pass without one); the dirty set is every
    # CLEAN since h0, and the guest ran only inside those windows.
    dirty = Bitmap(src.pages)
    found: dict[int, int] = {}
    for _ in range(8):
        dirty |= dirty_window(src, 1.5)
        found = iterations(src, dirty.to_pfns())
        if max(found.values(), default=0) > n0:
            break
    h1 = src.page_hashes()[1]
    changed = [pfn for pfn, (a, b) in enumerate(zip(h0, h1, strict=True)) if a != b]
    dirty_set = set(dirty.to_pfns())
    missed = [pfn for pfn in changed if pfn not in dirty_set]
    assert not missed, f"{len(missed)} pages changed, not reported dirty: {[hex(p) for p in missed[:20]]}"
    n1 = max(found.values(), default=0)
    assert n1 > n0, f"no newer guest iteration in the dirty pages (before {n0}, now {n1})"
    newest = [pfn for pfn, n in found.items() if n == n1]
    # Control: pages outside the dirty set never hold the newest iteration.
    holes = collections.Counter(h1).most_common(1)[0][0]  # the zero page's hash
    ram = [pfn for pfn, h in enumerate(h1) if h != holes and pfn not in dirty_set]
    clean_sample = ram[:: max(1, len(ram) // 3000)][:3000]
    stale = [pfn for pfn, n in iterations(src, clean_sample).items() if n >= n1]
    assert not stale, f"non-dirty pages hold the newest iteration {n1}: {stale[:10]}"
    note(
        f"{name_of(src)} window: {dirty.count()} dirty, {len(changed)} changed (all dirty), "
        f"iteration {n0} -> {n1} in {len(newest)} dirty pages; "
        f"{len(clean_sample)} clean pages sampled, none with it"
    )


# ---- copy through the backend and the stream -------------------------------------


def stream_copy(src: Domain, dst: Domain, pages: Bitmap, *, context: bool) -> native.Event:
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            w = native.StreamWriter(a, timeout=60)
            w.header(src)
            w.pages(src, pages)
            if context:
                w.context(src)
            w.checkpoint(1, 1)
            w.end()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=send)
    t.start()
    try:
        r = native.StreamReader(b, native.Direction.FORWARD, dst, timeout=60)
        r.header()
        ev = r.next()
    finally:
        t.join()
        a.close()
        b.close()
    assert not errors, errors
    return ev


def test_page_copy_to_a_paused_domain(pvh_pair: tuple[Domain, Domain]) -> None:
    src, dst = pvh_pair
    assert dst.paused, "the copy target was created paused"
    assert (src.pages, src.type) == (dst.pages, dst.type)
    src.logdirty_enable()
    dirty = Bitmap(src.pages)
    for _ in range(6):  # a starved guest (TCG on a busy host) may need more than 1 s
        time.sleep(1.0)
        dirty |= src.dirty_read_clear()
        if dirty.count() > 300:
            break
    src.pause()
    dirty |= src.dirty_read_clear()
    pfns = dirty.to_pfns()
    assert len(pfns) > 100
    want, before = range_digest(src, pfns), range_digest(dst, pfns)
    assert before != want, "the target already held the source's pages"
    ev = stream_copy(src, dst, dirty, context=True)
    assert ev.kind == native.EventKind.CHECKPOINT and ev.pages == len(pfns)
    assert range_digest(dst, pfns) == want, "the copied range differs between source and target"
    # The HVM_CONTEXT record went along and was set on pvh-dst at the commit.
    ctx_diffs = record_diffs(src.context(), dst.context())
    assert only_tsc_or_irr(ctx_diffs), f"vCPU context differs after the stream: {ctx_diffs}"
    assert all(src.read_page(p) == dst.read_page(p) for p in pfns[:: max(1, len(pfns) // 200)])
    note(
        f"copied {len(pfns)} dirty pages over the stream: the range's sha256 was {before[:12]} on pvh-dst, "
        f"now {want[:12]} on both"
    )


def range_digest(dom: Domain, pfns: list[int]) -> str:
    """sha256 over the pages, in pfn order."""
    h = hashlib.sha256()
    for pfn in pfns:
        h.update(dom.read_page(pfn))
    return h.hexdigest()


HOLE = 0x80000  # 2 GiB: a gfn without RAM in a 128 MiB PVH guest


def test_holes_read_as_zeros_and_commit_skips_them(pvh_pair: tuple[Domain, Domain]) -> None:
    # A PVH guest's page count spans its whole gfn space (max gpfn + 1, about
    # 4 GiB) though only 128 MiB is RAM: holes read as zeros, a checkpoint
    # may carry them as zeros (a full copy does), but never data.
    src, dst = pvh_pair
    assert src.read_page(HOLE) == bytes(native.PAGE_SIZE)
    with pytest.raises(NativeError) as info:
        dst.write_page(HOLE, b"\xaa" * native.PAGE_SIZE)
    assert info.value.code == ErrorCode.BACKEND and "holds no RAM" in str(info.value), info.value
    src.pause()
    ev = stream_copy(src, dst, Bitmap.from_pfns(src.pages, [0x100, HOLE, HOLE + 1]), context=False)
    assert ev.pages == 3
    assert dst.read_page(0x100) == src.read_page(0x100)

    a, b = socket.socketpair()
    try:
        w = native.StreamWriter(a, timeout=30)
        w.header(src)
        body = struct.pack("<IIQ", 1, 0, HOLE) + b"\xaa" * native.PAGE_SIZE
        w.raw_record(native.RecordType.PAGE_DATA, body)
        w.checkpoint(1, 2)
        r = native.StreamReader(b, native.Direction.FORWARD, dst, timeout=30)
        r.header()
        with pytest.raises(NativeError) as info:
            r.next()
    finally:
        a.close()
        b.close()
    assert info.value.code == ErrorCode.BACKEND
    assert "holds no RAM but the checkpoint has data" in str(info.value)
    note(
        f"hole {HOLE:#x}: reads as zeros; write_page refused; zeros committed as a no-op; data refused: "
        f"{info.value}"
    )


# ---- vCPU context ----------------------------------------------------------------


def hvm_records(blob: bytes) -> list[tuple[int, int, bytes]]:
    """(typecode, instance, data) of an HVM save blob (hvm_save_descriptor)."""
    out, off = [], 0
    while off + 8 <= len(blob):
        typecode = int.from_bytes(blob[off : off + 2], "little")
        instance = int.from_bytes(blob[off + 2 : off + 4], "little")
        length = int.from_bytes(blob[off + 4 : off + 8], "little")
        out.append((typecode, instance, blob[off + 8 : off + 8 + length]))
        off += 8 + length
        if typecode == 0:
            break
    return out


CPU_RECORD = 2  # HVM_SAVE_CODE(CPU)
CPU_TSC = (1008, 1016)  # offsetof(struct hvm_hw_cpu, tsc), 8 bytes (public/arch-x86/hvm/save.h)
LAPIC_REGS_RECORD = 6  # HVM_SAVE_CODE(LAPIC_REGS): the 1 KiB APIC register page
APIC_IRR = (0x200, 0x280)  # interrupt request registers


def byte_ranges(a: bytes, b: bytes) -> list[tuple[int, int]]:
    """[start, end) ranges where a and b differ (same length)."""
    out: list[tuple[int, int]] = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            if out and out[-1][1] == i:
                out[-1] = (out[-1][0], i + 1)
            else:
                out.append((i, i + 1))
    return out


def record_diffs(a: bytes, b: bytes) -> list[tuple[int, int, list[tuple[int, int]]]]:
    ra, rb = hvm_records(a), hvm_records(b)
    assert [(t, i, len(d)) for t, i, d in ra] == [(t, i, len(d)) for t, i, d in rb], "record layout differs"
    return [(t, i, byte_ranges(d, d2)) for (t, i, d), (_, _, d2) in zip(ra, rb, strict=True) if d != d2]


def only_tsc(diffs: list[tuple[int, int, list[tuple[int, int]]]]) -> bool:
    return all(t == CPU_RECORD and CPU_TSC[0] <= lo and hi <= CPU_TSC[1] for t, _, r in diffs for lo, hi in r)


def only_tsc_or_irr(diffs: list[tuple[int, int, list[tuple[int, int]]]]) -> bool:
    def allowed(t: int, lo: int, hi: int) -> bool:
        if t == CPU_RECORD:
            return CPU_TSC[0] <= lo and hi <= CPU_TSC[1]
        return t == LAPIC_REGS_RECORD and APIC_IRR[0] <= lo and hi <= APIC_IRR[1]

    return all(allowed(t, lo, hi) for t, _, r in diffs for lo, hi in r)


def cpu_tsc(blob: bytes) -> int:
    data = next(d for t, _, d in hvm_records(blob) if t == CPU_RECORD)
    return int.from_bytes(data[CPU_TSC[0] : CPU_TSC[1]], "little")


def test_context_round_trip_pvh(pvh_pair: tuple[Domain, Domain]) -> None:
    src, dst = pvh_pair
    src.pause()
    before = src.context()
    again = src.context()  # control: the same paused domain, read twice
    dst.set_context(before)
    after = dst.context()
    assert len(before) > 0
    types = sorted({t for t, _, _ in hvm_records(before)})
    control, diffs = record_diffs(before, again), record_diffs(before, after)
    note(
        f"context of {len(before)} bytes, records {types}; get twice differs in {control}; "
        f"get, set onto pvh-dst, get differs in {diffs}"
    )
    # Xen computes the guest TSC at each save (hvm_save_cpu_ctxt: host TSC +
    # the domain's offset), so it moves on between any two reads, even of a
    # paused domain; and Xen still posts event-channel upcalls to a paused
    # running guest (its callback vector's bit in the APIC IRR).  pvh-dst
    # never ran (no callback vector): after set + get, every byte but the
    # TSC must come back as it was set.
    assert only_tsc_or_irr(control), f"two reads of a paused domain differ beyond TSC and IRR: {control}"
    assert only_tsc(diffs), f"context differs after set + get beyond the TSC: {diffs}"
    assert cpu_tsc(after) >= cpu_tsc(before)
    note(f"TSC moved on by {cpu_tsc(after) - cpu_tsc(before)} ticks between the get and the get after set")


# ---- failure modes inside the lab ------------------------------------------------


def expect(code: ErrorCode, text: str, name: str) -> NativeError:
    with pytest.raises(NativeError) as info:
        Domain.xen(name).close()
    assert info.value.code == code, info.value
    assert text in str(info.value), info.value
    note(f"{name!r}: {info.value}")
    return info.value


def test_unknown_domain_name() -> None:
    expect(ErrorCode.NOT_FOUND, "backend xen: no domain named 'no-such-guest'", "no-such-guest")


def test_unknown_domid() -> None:
    expect(ErrorCode.NOT_FOUND, "backend xen: no domain with id 4000", "4000")


def test_dom0_refused() -> None:
    expect(ErrorCode.INVAL, "refusing to operate on dom0", "0")


def test_not_privileged() -> None:
    code = (
        "from colo_plane.native import Domain, NativeError\n"
        "try:\n    Domain.xen('pvh-src')\nexcept NativeError as e:\n    print(int(e.code), e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        cwd="/opt/colo",
        timeout=120,
    )
    note(f"uid 65534: {out.stdout.strip()} {out.stderr.strip()}")
    assert out.stdout.startswith(f"{int(ErrorCode.PERMISSION)} "), out
    assert "backend xen: not privileged" in out.stdout


def test_pv_guest_that_never_booted() -> None:
    # A PV guest publishes its p2m while it boots: before that there is no
    # pfn -> mfn table to map through, and the backend says so.
    err = expect(ErrorCode.BACKEND, "has not published its p2m", "pv-dst")
    assert isinstance(err, BackendError)


def test_read_clear_needs_logdirty_enabled() -> None:
    with Domain.xen("pv-src") as dom:
        with pytest.raises(NativeError) as info:
            dom.dirty_read_clear()
        assert info.value.code == ErrorCode.INVAL and "log-dirty is not enabled" in str(info.value)


def test_pv_context_set_refused() -> None:
    with Domain.xen("pv-src") as dom:
        dom.pause()
        try:
            blob = dom.context()
            assert len(blob) > 0
            with pytest.raises(NativeError) as info:
                dom.set_context(blob)
            assert info.value.code == ErrorCode.UNSUPPORTED and "PV domain" in str(info.value)
        finally:
            dom.unpause()


def test_logdirty_left_on_by_a_dead_owner(src: Domain) -> None:
    # An agent that died with log-dirty on leaves it on: Xen then answers
    # ENABLE_LOGDIRTY with EINVAL.  A new owner restarts the log instead.
    domid = domid_of(src)
    code = (
        "import os\nfrom colo_plane.native import Domain\n"
        f"d = Domain.xen('{domid}')\nd.logdirty_enable()\nd.logdirty_enable()\nos._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/opt/colo", timeout=120)
    src.logdirty_enable()
    time.sleep(0.3)
    assert src.dirty_read_clear().count() > 0


def test_logdirty_turned_off_behind_this_handle(src: Domain) -> None:
    # Xen answers CLEAN with an empty bitmap when log-dirty is off: if anyone
    # turns it off under us, the next read must fail, not report "clean".
    src.logdirty_enable()
    other = Domain.xen(domid_of(src))
    other.logdirty_enable()  # restarts it
    other.close()  # and turns it off
    with pytest.raises(NativeError) as info:
        src.dirty_read_clear()
    assert info.value.code == ErrorCode.BACKEND and "turned off behind" in str(info.value), info.value
    note(f"{name_of(src)}: {info.value}")
    time.sleep(0.3)
    assert src.dirty_read_clear().count() > 0  # on again from the failed read


def name_of(dom: Domain) -> str:
    return _NAMES[id(dom)]


def domid_of(dom: Domain) -> str:
    return subprocess.run(
        ["xl", "domid", name_of(dom)], check=True, capture_output=True, text=True
    ).stdout.strip()


# ---- figures --------------------------------------------------------------------


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def test_figures(src: Domain) -> None:
    name = name_of(src)
    pause, unpause = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        src.pause()
        t1 = time.perf_counter()
        src.unpause()
        t2 = time.perf_counter()
        pause.append(t1 - t0)
        unpause.append(t2 - t1)
        time.sleep(0.01)
    figure(f"{name}: pause (median of 20)", median_ms(pause), "ms")
    figure(f"{name}: unpause (median of 20)", median_ms(unpause), "ms")

    src.logdirty_enable()
    clean = []
    for _ in range(10):
        time.sleep(0.1)
        t0 = time.perf_counter()
        src.dirty_read_clear()
        clean.append(time.perf_counter() - t0)
    figure(f"{name}: CLEAN over the whole domain ({src.pages} pages, median of 10)", median_ms(clean), "ms")

    src.pause()
    dirty = dirty_window(src, 2.0)
    pfns = dirty.to_pfns()[:1000]
    if len(pfns) < 1000:  # top up with other RAM pages so the batch is 1,000
        taken = set(pfns)
        pfns += list(itertools.islice((p for p in range(src.pages) if p not in taken), 1000 - len(pfns)))
    batch = Bitmap.from_pfns(src.pages, pfns)
    figure(f"{name}: dirty pages in a 2 s window", dirty.count(), "pages")

    stream = []
    for _ in range(3):  # TCG on a shared host is noisy: the median of 3
        a, b = socket.socketpair()
        t = threading.Thread(target=drain, args=(b, 1000 * 4104))
        t.start()
        t0 = time.perf_counter()
        native.StreamWriter(a, timeout=60).pages(src, batch)
        stream.append(time.perf_counter() - t0)
        t.join()
        a.close()
        b.close()
    figure(
        f"{name}: map + read 1,000 dirty pages into the stream (batches of 1024, median of 3)",
        median_ms(stream),
        "ms",
    )

    t0 = time.perf_counter()
    for pfn in pfns:
        src.read_page(pfn)
    figure(f"{name}: read_page x1,000 (one mapping each)", (time.perf_counter() - t0) * 1e3, "ms")

    t0 = time.perf_counter()
    src.hash()
    figure(f"{name}: hash of the whole domain", (time.perf_counter() - t0) * 1e3, "ms")
    src.unpause()


def drain(sock: socket.socket, at_least: int) -> int:
    got = 0
    while got < at_least:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


# ---- a domain that vanishes (last: it destroys pvh-dst) ---------------------------


def test_a_destroyed_domain_is_seen_gone() -> None:
    """colo_domain_present on a real Xen: a domain destroyed under an open handle
    (xl destroy, as an administrator would) reads as gone, and its calls fail
    instead of touching another domain (docs/coordinator.md, "Which side holds
    the copy")."""
    with Domain.xen("pvh-dst") as dom:  # pv-dst never booted: it cannot be opened
        assert dom.present()
        subprocess.run(["xl", "destroy", "pvh-dst"], check=True, timeout=60)
        deadline = time.monotonic() + 10
        while dom.present():  # dying, then gone
            assert time.monotonic() < deadline, "xl destroy: the domain still reads as present"
            time.sleep(0.05)
        note("pvh-dst destroyed: present() is False")
        with pytest.raises(NativeError):
            dom.unpause()
