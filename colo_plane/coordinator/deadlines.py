"""Deadlines of a first boot, which follow the guest's size: making a 2 GiB
secondary domain (allocated and written) took longer than the 5 s any
other call gets, and `colo protect --wait` gave up on a guest that was
PROTECTED 20 s later."""

from __future__ import annotations

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.settings import Settings
from colo_plane.spec import PAGE_BYTES

# What a busy host is assumed to manage when it makes (sim: allocates and
# writes) or copies a guest's memory: a tenth of what an idle one does.
MEMORY_RATE = 64 * 1024 * 1024  # bytes/s


def guest_bytes(spec: colo_pb2.DomainSpec) -> int:
    """The guest memory a first boot makes and copies (0 when not known here: Xen)."""
    return spec.sim.pages * PAGE_BYTES if spec.WhichOneof("backend") in (None, "sim") else 0


def prepare_timeout(spec: colo_pb2.DomainSpec, settings: Settings) -> float:
    """PrepareSecondary: the secondary's domain is made before it answers."""
    return settings.rpc_timeout + guest_bytes(spec) / MEMORY_RATE


def first_boot_budget(spec: colo_pb2.DomainSpec, settings: Settings) -> float:
    """From ProtectDomain to PROTECTED, at worst: make both domains, copy one."""
    return prepare_timeout(spec, settings) + settings.first_boot_timeout + settings.rpc_timeout


def describe(spec: colo_pb2.DomainSpec) -> str:
    size = guest_bytes(spec)
    return f"a {size / 2**30:.1f} GiB guest" if size >= 2**30 else f"a {size / 2**20:.0f} MiB guest"
