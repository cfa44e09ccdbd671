"""Opening the domain a DomainSpec names, on this host's backend."""

from __future__ import annotations

import hashlib
import os

import grpc

from colo_plane import native
from colo_plane._proto import colo_pb2
from colo_plane.rpc import fail

MAX_DEFAULT_SERVICE_PAGES = 4096  # 16 MiB of key-value store: ~65k keys
MAX_SIM_PAGES = 1 << 24


def host_seed(base: int, host_id: str) -> int:
    """The vCPU's random stream on this host: the spec's seed mixed with the
    host id, so primary and secondary dirty different pages (A != B)."""
    if base == 0:
        base = int.from_bytes(os.urandom(8), "little")
    digest = hashlib.blake2b(f"{base}:{host_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def check_spec(spec: colo_pb2.DomainSpec) -> None:
    """INVALID_ARGUMENT for a spec this agent cannot run."""
    backend = spec.WhichOneof("backend")
    if backend == "sim":
        sim = spec.sim
        if not 0 < sim.pages <= MAX_SIM_PAGES:
            fail(grpc.StatusCode.INVALID_ARGUMENT, f"sim.pages must be 1..{MAX_SIM_PAGES}, got {sim.pages}")
        if sim.hot_percent > 100 or sim.hot_pages > sim.pages:
            fail(grpc.StatusCode.INVALID_ARGUMENT, "sim hot set: hot_percent 0..100 and hot_pages <= pages")
        if sim.service_pages and sim.service_pages >= sim.pages:
            fail(grpc.StatusCode.INVALID_ARGUMENT, "sim.service_pages must leave guest memory: below pages")
        if not 0.0 <= sim.divergence_probability <= 1.0:
            fail(grpc.StatusCode.INVALID_ARGUMENT, "sim.divergence_probability must be within 0.0..1.0")
    elif backend == "xen":
        if not native.xen_built():
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                "backend xen is not built into this agent (no xenctrl.h at build time): place the domain "
                "on a Xen host",
            )
        if not spec.xen.name:
            fail(grpc.StatusCode.INVALID_ARGUMENT, "xen.name must name the Xen domain")
    else:
        fail(grpc.StatusCode.INVALID_ARGUMENT, "spec must set a backend: sim or xen")


def open_domain(spec: colo_pb2.DomainSpec, host_id: str, *, secondary: bool) -> native.Domain:
    """A paused domain for spec (sim: created; xen: attached)."""
    check_spec(spec)
    if spec.WhichOneof("backend") == "xen":
        name = spec.xen.secondary_name if secondary and spec.xen.secondary_name else spec.xen.name
        dom = native.Domain.xen(name)
        dom.pause()
        return dom
    sim = spec.sim
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
