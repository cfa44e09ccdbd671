"""The NIC proxy (docs/proxy.md, the NIC path), steered from the agent: the
glue for a pair whose spec names a guest network (spec.network).

No frame crosses Python.  On the primary a C thread sits between the uplink
and the guest's NIC (native/netproxy.c); it reports each diverged
connection into the domain's arm, so an armed checkpoint starts in C; the
checkpoint reads its last_seq from the proxy while the guest is paused and
releases the held frames it covers at SECONDARY_RESUMED (native/checkpoint.c).
This module opens the ports, attaches the pair's proxy link, tells the
arming module of divergences (its fallback asks the coordinator when nothing
is armed) and keeps the metrics.

On the secondary the NIC proxy injects the forwarded frames and rewrites its
guest's TCP sequence numbers; it outlives the proxy link, because on
promotion the same proxy, with its rewriter's offsets, bridges the guest to
the uplink (clients' connections carry on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.agent.arming import TICK, Arming
from colo_plane.native import netproxy
from colo_plane.native.netproxy import NetProxy, NetProxyConfig, NetProxyStats, NetRole

log = logging.getLogger(__name__)

RESULTS = ("equal", "passed", "mismatch", "timeout", "uncomparable")


def config(role: NetRole, spec: colo_pb2.DomainSpec, compare_timeout: float) -> NetProxyConfig:
    # The sim backend's checkpoints copy no guest TCP state (the guests are
    # stand-ins: network namespaces), so the secondary keeps its offsets and
    # frames; a real VM's checkpoint carries its TCP stack, and resets them.
    keep = spec.WhichOneof("backend") == "sim"
    return NetProxyConfig(role, compare_timeout=compare_timeout, keep_offsets=keep)


class NicMetrics:
    """Compare results by protocol and reason, by the change of the C counters."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self._seen: NetProxyStats | None = None

    def refresh(self, now: NetProxyStats) -> None:
        seen = self._seen
        for result in RESULTS:
            for proto, count in getattr(now, result).items():
                delta = count - (getattr(seen, result)[proto] if seen is not None else 0)
                if delta:
                    metrics.NIC_COMPARES.labels(proto, result).inc(delta)
        for kind in ("mismatch", "timeout"):
            total = sum(getattr(now, kind).values())
            before = sum(getattr(seen, kind).values()) if seen is not None else 0
            if total > before:
                metrics.DIVERGENCES.labels(kind, self.domain).inc(total - before)
        self._seen = now


class PrimaryNic:
    """The primary's NIC proxy: what agent/proxy.py's PrimaryProxy is to the
    sim service, with the same calls (core.py and replica.py use either)."""

    def __init__(
        self,
        domain: str,
        network: colo_pb2.NetworkSpec,
        spec: colo_pb2.DomainSpec,
        *,
        arming: Arming | None,
        compare_timeout: float,
    ) -> None:
        self.domain = domain
        self.network = network
        self.spec = spec
        self.arming = arming
        self.compare_timeout = compare_timeout
        self._np: NetProxy | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._metrics = NicMetrics(domain)
        self._divergences = 0
        self._links_lost = 0

    async def start(self) -> None:
        guest = netproxy.open_port(self.network.interface)
        try:
            uplink = netproxy.open_port(self.network.uplink)
        except BaseException:
            guest.close()
            raise
        try:
            self._np = NetProxy(config(NetRole.PRIMARY, self.spec, self.compare_timeout), guest, uplink)
        except BaseException:
            guest.close()
            uplink.close()
            raise
        self._watch()

    @classmethod
    def promoted(cls, domain: str, nic: NetProxy, network: colo_pb2.NetworkSpec) -> PrimaryNic:
        """A promoted secondary's proxy, bridging its guest to the uplink
        unprotected, its rewriter still on."""
        uplink = netproxy.open_port(network.uplink)
        try:
            nic.promote(uplink)
        except BaseException:
            uplink.close()
            raise
        self = cls(domain, network, colo_pb2.DomainSpec(), arming=None, compare_timeout=1.0)
        self._np = nic
        self._links_lost = nic.stats().link_lost  # the old primary's, gone before the promotion
        self._watch()
        return self

    def _watch(self) -> None:
        assert self._np is not None
        if self.arming is not None:
            self._np.set_arm(self.arming.arm)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._np.event_fd, self._drain)
        self._ticker = loop.call_later(TICK, self._tick)

    @property
    def data_path(self) -> NetProxy | None:
        """The C proxy (a checkpoint reads its last_seq and releases through it)."""
        return self._np

    @property
    def held(self) -> int:
        return self._np.stats().held if self._np is not None else 0

    async def attach(self, link: socket.socket) -> None:
        assert self._np is not None
        self._np.attach(link)

    async def detach(self) -> None:
        """The link drops with the secondary's end; the C side holds output meanwhile."""

    def unprotect(self) -> int:
        return self._np.unprotect() if self._np is not None else 0

    def checkpoint_done(self, epoch: int, last_seq: int) -> None:
        """SECONDARY_RESUMED of a checkpoint done outside C (the first boot)."""
        if self.arming is not None:
            self.arming.covered(last_seq)
        if self._np is not None:
            self._np.checkpoint_done(epoch, last_seq)

    def _drain(self) -> None:
        """A divergence or a lost link: tell the arming module (its fallback)."""
        if self._np is None:
            return
        with contextlib.suppress(BlockingIOError):
            os.read(self._np.event_fd, 8)  # an eventfd: one read clears it
        st = self._np.stats()
        if st.link_lost > self._links_lost:
            self._links_lost = st.link_lost
            log.warning("%s: NIC proxy link to the secondary lost; holding output", self.domain)
        if st.divergences > self._divergences:
            self._divergences = st.divergences
            reason = "timeout" if sum(st.timeout.values()) > sum(st.mismatch.values()) else "mismatch"
            if self.arming is not None:
                self.arming.held(self._np.last_seq, reason)

    def _tick(self) -> None:
        if self._np is not None:
            self._metrics.refresh(self._np.stats())
            self._drain()
        if self.arming is not None:
            self.arming.tick()
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._np is not None:
            asyncio.get_running_loop().remove_reader(self._np.event_fd)
            self._metrics.refresh(self._np.stats())
            await asyncio.to_thread(self._np.close)  # joins the C thread
            self._np = None


def start_secondary(spec: colo_pb2.DomainSpec, nic: str, link: socket.socket) -> NetProxy:
    """The secondary's NIC proxy on its guest's NIC, fed over link."""
    guest = netproxy.open_port(nic)
    try:
        np = NetProxy(config(NetRole.SECONDARY, spec, 1.0), guest)
    except BaseException:
        guest.close()
        raise
    try:
        np.attach(link)
    except BaseException:
        np.close()
        raise
    return np
