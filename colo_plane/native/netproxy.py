"""NetProxy: the NIC proxy's data path (native/netproxy.c and its files), on a C thread.

The primary's proxy sits between the uplink and the primary guest's NIC,
forwards every ingress frame to the secondary and compares both guests'
output; the secondary's injects the forwarded frames and rewrites its
guest's TCP sequence numbers onto the primary's (docs/proxy.md, the NIC
path).  Frames never cross Python: this module only builds, steers and
reads counters.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, fields
from typing import Any, Final

from colo_plane.native._args import u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.arm import Arm
from colo_plane.native.errors import _check

__all__ = ["NP_PROTOCOLS", "NetProxy", "NetProxyConfig", "NetProxyStats", "NetRole", "open_port"]

NP_PROTOCOLS: Final = ("tcp", "udp", "icmp", "other")  # enum colo_np_proto, in order
MAX_FRAME: Final = int(lib.COLO_NP_MAX_FRAME)


class NetRole(enum.IntEnum):
    PRIMARY = lib.COLO_NP_PRIMARY
    SECONDARY = lib.COLO_NP_SECONDARY


@dataclass(frozen=True)
class NetProxyConfig:
    role: NetRole
    compare_timeout: float = 0.5  # seconds the secondary's output may lag
    max_conns: int = 65536
    max_held_bytes: int = 64 << 20
    conn_buf_max: int = 4 << 20
    keep_offsets: bool = False  # True only where checkpoints do not copy the guests' TCP state

    def _c(self) -> Any:
        ms = round(self.compare_timeout * 1000)
        for name, value in (
            ("compare timeout (ms)", ms),
            ("max_conns", self.max_conns),
            ("max_held_bytes", self.max_held_bytes),
            ("conn_buf_max", self.conn_buf_max),
        ):
            if not 0 < value < 2**32:
                raise ValueError(f"netproxy {name} must be positive and under 2**32, got {value}")
        cfg = ffi.new("struct colo_np_config *")
        cfg.role = int(self.role)
        cfg.compare_timeout_ms = ms
        cfg.max_conns = self.max_conns
        cfg.max_held_bytes = self.max_held_bytes
        cfg.conn_buf_max = self.conn_buf_max
        cfg.keep_offsets = 1 if self.keep_offsets else 0
        return cfg


@dataclass(frozen=True)
class NetProxyStats:
    ingress: int
    egress: int
    released: int
    held: int
    held_bytes: int
    equal: dict[str, int]
    passed: dict[str, int]
    mismatch: dict[str, int]
    timeout: dict[str, int]
    uncomparable: dict[str, int]
    ckpt_released: int
    conns: int
    evicted: int
    table_full: int
    drop_runt: int
    drop_malformed: int
    drop_held_full: int
    drop_ring: int
    drop_link: int
    drop_covered: int
    rewritten: int
    link_lost: int
    divergences: int
    checkpoints: int

    @classmethod
    def _of(cls, st: Any) -> NetProxyStats:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = getattr(st, f.name)
            if f.name in ("equal", "passed", "mismatch", "timeout", "uncomparable"):
                values[f.name] = {p: int(raw[i]) for i, p in enumerate(NP_PROTOCOLS)}
            else:
                values[f.name] = int(raw)
        return cls(**values)


def open_port(ifname: str, netns: str | None = None) -> socket.socket:
    """An AF_PACKET socket on ifname, in the named network namespace (an
    `ip netns` name or a path) or this process's.  A missing interface:
    BackendError(NOT_FOUND), naming it."""
    path = None if netns is None else (netns if "/" in netns else f"/var/run/netns/{netns}")
    out = ffi.new("int *")
    _check(lib.colo_np_port_open(ffi.NULL if path is None else path.encode(), ifname.encode(), out))
    return socket.socket(fileno=out[0])


class NetProxy:
    """One side's NIC proxy.  It takes the port sockets (and the link) over;
    close() stops its thread and closes them."""

    __slots__ = ("_arm", "_ptr", "role")

    def __init__(
        self, config: NetProxyConfig, guest: socket.socket, uplink: socket.socket | None = None
    ) -> None:
        if config.role is NetRole.PRIMARY and uplink is None:
            raise ValueError("a primary netproxy needs an uplink port")
        out = ffi.new("colo_np **")
        up = -1 if uplink is None else uplink.fileno()
        _check(lib.colo_np_new(config._c(), guest.fileno(), up, out))
        guest.detach()
        if uplink is not None:
            uplink.detach()
        self._ptr: Any = out[0]
        self._arm: Arm | None = None
        self.role = config.role

    def set_arm(self, arm: Arm | None) -> None:
        """Primary: report each diverged connection into arm (the checkpoint
        side's), so an armed checkpoint starts the moment output diverges."""
        _check(lib.colo_np_set_arm(self._p(), ffi.NULL if arm is None else arm._p()))
        self._arm = arm  # the arm outlives the reports into it

    def _p(self) -> Any:
        if self._ptr is None:
            raise ValueError("netproxy is closed")
        return self._ptr

    def attach(self, link: socket.socket) -> None:
        """The pair's proxy link (authenticated by the caller)."""
        _check(lib.colo_np_attach(self._p(), link.fileno()))
        link.detach()

    @property
    def event_fd(self) -> int:
        """Readable on each divergence and each lost link."""
        return int(lib.colo_np_event_fd(self._p()))

    @property
    def last_seq(self) -> int:
        """The last ingress frame given to the guest."""
        return int(lib.colo_np_last_seq(self._p()))

    def checkpoint_done(self, epoch: int, last_seq: int) -> None:
        lib.colo_np_checkpoint_done(self._p(), u64("epoch", epoch), u64("last_seq", last_seq))

    def unprotect(self) -> int:
        out = ffi.new("uint64_t *")
        lib.colo_np_unprotect(self._p(), out)
        return int(out[0])

    def promote(self, uplink: socket.socket) -> None:
        _check(lib.colo_np_promote(self._p(), uplink.fileno()))
        uplink.detach()

    def stats(self) -> NetProxyStats:
        st = ffi.new("struct colo_np_stats *")
        lib.colo_np_stats(self._p(), st)
        return NetProxyStats._of(st)

    def close(self) -> None:
        if self._ptr is not None:
            lib.colo_np_free(self._ptr)
            self._ptr = None
            self._arm = None

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
