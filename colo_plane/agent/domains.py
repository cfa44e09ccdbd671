"""Opening the domain a DomainSpec names, on this host's backend, if this
host can hold it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc

from colo_plane import native
from colo_plane._proto import colo_pb2
from colo_plane.rpc import fail

MAX_DEFAULT_SERVICE_PAGES = 4096  # 16 MiB of key-value store: ~65k keys
MEMINFO = Path("/proc/meminfo")


def host_seed(base: int, host_id: str) -> int:
    """The vCPU's random stream on this host: the spec's seed mixed with the
    host id, so primary and secondary dirty different pages (A != B)."""
    if base == 0:
        base = int.from_bytes(os.urandom(8), "little")
    digest = hashlib.blake2b(f"{base}:{host_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def mem_available(meminfo: Path = MEMINFO) -> int | None:
    """The kernel's estimate of memory free for new allocations, in bytes
    (MemAvailable); None where it does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable":
                return int(value.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_room(pages: int, *, meminfo: Path = MEMINFO) -> None:
    """RESOURCE_EXHAUSTED for a sim domain this host cannot hold: its memory
    is allocated and written in full when it opens, and a secondary's staged
    checkpoint may grow to a second copy, so a domain may take at most half
    of what is available."""
    available = mem_available(meminfo)
    need = pages * native.PAGE_SIZE
    if available is not None and need > available // 2:
        fail(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"a sim domain of {pages} pages needs {need >> 20} MiB and as much again for a staged "
            f"checkpoint; this host has {available >> 20} MiB available: give it fewer pages or place "
            "it on a host with more free memory",
            reason=colo_pb2.ERROR_REASON_NO_MEMORY,
        )


def _check_backend(spec: colo_pb2.DomainSpec) -> None:
    if spec.WhichOneof("backend") == "xen" and not native.xen_built():
        fail(
            grpc.StatusCode.FAILED_PRECONDITION,
            "backend xen is not built into this agent (no xenctrl.h at build time): place the domain "
            "on a Xen host",
            reason=colo_pb2.ERROR_REASON_BACKEND_NOT_BUILT,
        )


SYS_NET = Path("/sys/class/net")


def guest_nic(network: colo_pb2.NetworkSpec, *, secondary: bool) -> str:
    """This host's guest NIC: the secondary's may have a name of its own."""
    return network.secondary_interface if secondary and network.secondary_interface else network.interface


def check_network(spec: colo_pb2.DomainSpec, *, secondary: bool = False, sys_net: Path = SYS_NET) -> None:
    """FAILED_PRECONDITION (NO_NIC) for a spec.network interface this host
    does not have, at pair setup rather than at the first frame."""
    if not spec.HasField("network"):
        return
    nic = guest_nic(spec.network, secondary=secondary)
    nic_field = "secondary_interface" if secondary and spec.network.secondary_interface else "interface"
    for field, name in ((nic_field, nic), ("uplink", spec.network.uplink)):
        if not (sys_net / name).exists():
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no network interface {name!r} on this host (spec.network.{field}): "
                "create it (for a Xen guest, start the domain so its vif exists) or fix the spec",
                reason=colo_pb2.ERROR_REASON_NO_NIC,
            )


def open_domain(
    spec: colo_pb2.DomainSpec, host_id: str, *, secondary: bool, meminfo: Path = MEMINFO
) -> native.Domain:
    """A paused domain for spec (sim: created; xen: attached).  The spec's
    bounds are checked by the caller (colo_plane.spec); this host's own
    limits here."""
    _check_backend(spec)
    check_network(spec, secondary=secondary)
    if spec.WhichOneof("backend") == "xen":
        name = spec.xen.secondary_name if secondary and spec.xen.secondary_name else spec.xen.name
        dom = native.Domain.xen(name)
        dom.pause()
        return dom
    sim = spec.sim
    check_room(sim.pages, meminfo=meminfo)
    service_pages = sim.service_pages or min(MAX_DEFAULT_SERVICE_PAGES, sim.pages // 4)
    return native.Domain.sim(
        pages=sim.pages,
        seed=host_seed(sim.seed, host_id),
        rate=sim.dirty_rate,
        pattern=native.Pattern.HOTSET
        if sim.pattern == colo_pb2.SIM_PATTERN_HOT_SET
        else native.Pattern.UNIFORM,
        hot_pages=sim.hot_pages,
        hot_percent=sim.hot_percent,
        service_pages=service_pages,
        divergence=sim.divergence_probability,
    )
