"""The COLO proxy (docs/design.md §5), steered from the agent.

The data path is native (native/proxy.c, native/mirror.c): no client
request crosses Python.  On the primary a C thread owns the domain's client
address; it numbers each request, runs it on the primary guest, frames it
to the secondary and compares the replies.  Equal: released.  Different, or
missing past the reply timeout: held, reported in C into the domain's arm
(arming.py owns it: a held reply starts the armed checkpoint at once), and
a HOLD event reaches this module, which logs it and tells the arming
module (whose fallback asks the coordinator when nothing is armed).  The
agent reports each checkpoint that reached SECONDARY_RESUMED
(checkpoint_done); the C side releases every held reply the checkpoint's
state includes.  Unprotected,
replies go straight out; a primary that lost its secondary on its own keeps
holding until the coordinator says it runs unprotected.

On the secondary a C thread runs the forwarded requests on the secondary
guest, in the primary's order, skipping those a checkpoint already carried.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from colo_plane import addresses, metrics, native
from colo_plane.agent.arming import TICK, Arming

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


class PrimaryProxy:
    def __init__(
        self,
        domain: str,
        dom: native.Domain,
        *,
        arming: Arming,
        reply_timeout: float,
        poll_us: int = 0,
    ) -> None:
        self.domain = domain
        self.dom = dom
        self.arming = arming  # the checkpoint side's: told of holds, covers and ticks
        self.reply_timeout = reply_timeout
        self.poll_us = poll_us
        self._data_path: native.Proxy | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._seen = native.ProxyStats()
        arming.on_first_arm(self._events_on_tick)

    async def start(self, host: str, port: int) -> str:
        listener = listen(host, port)
        address = addresses.join(host, listener.getsockname()[1])
        try:
            self._data_path = native.Proxy(
                self.dom, listener, self.reply_timeout, poll_us=self.poll_us, arm=self.arming.arm
            )
        except BaseException:
            listener.close()
            raise
        self.arming.covered(self._data_path.stats().covered)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._data_path.event_fd, self._drain)
        self._ticker = loop.call_later(TICK, self._tick)
        return address

    @property
    def data_path(self) -> native.Proxy | None:
        """The data path itself (a checkpoint releases replies through it in C)."""
        return self._data_path

    @property
    def held(self) -> int:
        return self._data_path.stats().held if self._data_path is not None else 0

    # -- the secondary -------------------------------------------------------------

    async def attach(self, link: socket.socket) -> None:
        """A secondary is in sync (first boot done): compare from now on."""
        assert self._data_path is not None
        self._data_path.attach(link)

    async def detach(self) -> None:
        """The secondary is gone: hold what is not yet released (until unprotect())."""
        if self._data_path is not None:
            self._data_path.detach()

    def unprotect(self) -> int:
        """The coordinator says the secondary is lost: release everything held."""
        return self._data_path.unprotect() if self._data_path is not None else 0

    def _events_on_tick(self) -> None:
        """Armed checkpoints serve held replies in C: Python needs the events
        only for the log, and the tick drains them (not two wake-ups a checkpoint)."""
        if self._data_path is not None:
            asyncio.get_running_loop().remove_reader(self._data_path.event_fd)

    def checkpoint_done(self, epoch: int, last_seq: int) -> None:
        """SECONDARY_RESUMED of checkpoint epoch (the first boot's), whose state
        includes every request <= last_seq: release them."""
        self.arming.covered(last_seq)
        if self._data_path is not None:
            self._data_path.checkpoint_done(epoch, last_seq)

    # -- what the C side tells ------------------------------------------------------

    def _drain(self) -> None:
        if self._data_path is None:
            return
        holds: list[str] = []
        newest: native.ProxyEvent | None = None
        releases: dict[tuple[int, int], list[str]] = {}
        for ev in self._data_path.events():
            if ev.kind is native.ProxyEventKind.HOLD:
                holds.append(f"{ev.seq} ({ev.reason}) t={ev.t_ns}")
                if newest is None or ev.seq > newest.seq:
                    newest = ev
            elif ev.kind is native.ProxyEventKind.RELEASE:
                releases.setdefault((ev.epoch, ev.t_ns), []).append(str(ev.seq))
            else:
                log.warning(
                    "%s: proxy link to the secondary lost (%s); holding output", self.domain, ev.detail
                )
        # The release rule, on the record (one line a batch: logging is dear
        # at hundreds of holds a second); tests check it against the sync points.
        if holds:
            log.info("%s: holding replies %s", self.domain, ", ".join(holds))
        if releases:
            log.info(
                "%s: released held replies %s",
                self.domain,
                "; ".join(
                    f"after epoch={epoch} resumed t={t_ns}: {', '.join(seqs)}"
                    for (epoch, t_ns), seqs in releases.items()
                ),
            )
        if newest is not None:
            self.arming.held(newest.seq, newest.reason)

    def _tick(self) -> None:
        """Metrics, the events, and the arming module's tick (its fallback)."""
        self._refresh_metrics()
        self._drain()
        self.arming.tick()
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _refresh_metrics(self) -> None:
        if self._data_path is None:
            return
        now, seen = self._data_path.stats(), self._seen
        metrics.PROXY_REQUESTS.inc(now.requests - seen.requests)
        metrics.DIVERGENCES.labels("mismatch", self.domain).inc(now.mismatches - seen.mismatches)
        metrics.DIVERGENCES.labels("timeout", self.domain).inc(now.timeouts - seen.timeouts)
        metrics.PROXY_BACKPRESSURE.inc(now.backpressure - seen.backpressure)
        # Gauges by the change: every pair's proxy of this agent adds its own.
        metrics.PROXY_CLIENTS_PAUSED.inc(now.clients_paused - seen.clients_paused)
        metrics.PROXY_OUTPUT_BYTES.inc(now.output_bytes - seen.output_bytes)
        if now.events_lost > seen.events_lost:
            # A hold that found no memory for its event: ask as if for the newest request.
            log.error("%s: %d proxy events lost", self.domain, now.events_lost - seen.events_lost)
            self.arming.held(now.last_seq)
        self._seen = now

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._data_path is not None:
            asyncio.get_running_loop().remove_reader(self._data_path.event_fd)
            self._drain()  # the last holds and releases, on the record
            self._refresh_metrics()
            await asyncio.to_thread(self._data_path.close)  # joins the C thread
            self._data_path = None
            # Its clients are gone with it.
            metrics.PROXY_CLIENTS_PAUSED.dec(self._seen.clients_paused)
            metrics.PROXY_OUTPUT_BYTES.dec(self._seen.output_bytes)


class SecondaryProxy:
    """Runs the primary's forwarded requests on the secondary guest."""

    def __init__(self, domain: str, dom: native.Domain, *, poll_us: int = 0) -> None:
        self.domain = domain
        self.dom = dom
        self.poll_us = poll_us

    async def run(self, link: socket.socket) -> None:
        mirror = native.Mirror(self.dom, link, poll_us=self.poll_us)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_reader(mirror.done_fd, done.set)
        try:
            await done.wait()
            result = mirror.result()
            log.info(
                "%s: proxy link from the primary closed (%s; %d requests run, %d carried by checkpoints)",
                self.domain,
                result.detail,
                result.served,
                result.skipped,
            )
        finally:
            loop.remove_reader(mirror.done_fd)
            await asyncio.to_thread(mirror.close)
