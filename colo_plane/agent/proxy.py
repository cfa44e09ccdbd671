"""The COLO proxy (docs/design.md §5), steered from the agent.

The data path is native (native/proxy.c, native/mirror.c): no client
request crosses Python.  On the primary a C thread owns the domain's client
address; it numbers each request, runs it on the primary guest, frames it
to the secondary and compares the replies.  Equal: released.  Different, or
missing past the reply timeout: held, and a HOLD event reaches this module,
which logs it.  The coordinator keeps an armed checkpoint waiting on the
proxy (docs/protocol.md): a held reply starts it in C at once.  Only when
no checkpoint was ever armed here, or none has been armed for a while
although replies are held, does this module ask the coordinator
(RequestCheckpoint).  The agent reports
each checkpoint that reached SECONDARY_RESUMED (checkpoint_done); the C side
releases every held reply the checkpoint's state includes.  Unprotected,
replies go straight out; a primary that lost its secondary on its own keeps
holding until the coordinator says it runs unprotected.

On the secondary a C thread runs the forwarded requests on the secondary
guest, in the primary's order, skipping those a checkpoint already carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from colo_plane import addresses, metrics, native

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
TICK = 0.5  # seconds: metrics refresh; a held reply's checkpoint asked for again
RETRY_AFTER_FAILURE = 0.1

# request_checkpoint(seq, reason: "mismatch" | "timeout") -> True once the
# coordinator took it: a checkpoint that starts after now is on its way.
RequestCheckpoint = Callable[[int, str], Awaitable[bool]]


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


class PrimaryProxy:
    def __init__(
        self,
        domain: str,
        dom: native.Domain,
        *,
        request_checkpoint: RequestCheckpoint,
        reply_timeout: float,
        poll_us: int = 0,
    ) -> None:
        self.domain = domain
        self.dom = dom
        self.request_checkpoint = request_checkpoint
        self.reply_timeout = reply_timeout
        self.poll_us = poll_us
        self._data_path: native.Proxy | None = None
        self.arm = native.Arm()  # held replies are reported here: an armed checkpoint waits on it
        self._want = 0  # highest held seq a checkpoint must include
        self._want_reason = "mismatch"
        self._asked = 0  # highest seq the coordinator promised a checkpoint for
        self._asked_at = 0.0  # loop time of that promise
        self._covered = 0
        self._asker: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._seen = native.ProxyStats()
        self._arms = 0  # armed checkpoints waiting now
        self._armed_ever = False
        self._unarmed_since = 0.0  # loop time the last armed checkpoint ended

    async def start(self, host: str, port: int) -> str:
        listener = listen(host, port)
        address = addresses.join(host, listener.getsockname()[1])
        try:
            self._data_path = native.Proxy(
                self.dom, listener, self.reply_timeout, poll_us=self.poll_us, arm=self.arm
            )
        except BaseException:
            listener.close()
            raise
        self._covered = self._data_path.stats().covered
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

    def arming(self, waiting: bool) -> None:
        """An armed checkpoint starts waiting (True) or ended (False)."""
        if not self._armed_ever and self._data_path is not None:
            # Armed checkpoints serve held replies in C: Python needs the events
            # only for the log, and the tick drains them (not two wake-ups a checkpoint).
            asyncio.get_running_loop().remove_reader(self._data_path.event_fd)
        self._armed_ever = True
        self._arms += 1 if waiting else -1
        if not waiting:
            self._unarmed_since = asyncio.get_running_loop().time()

    def checkpoint_done(self, epoch: int, last_seq: int) -> None:
        """SECONDARY_RESUMED of checkpoint epoch (the first boot's), whose state
        includes every request <= last_seq: release them."""
        self.covered(last_seq)
        if self._data_path is not None:
            self._data_path.checkpoint_done(epoch, last_seq)

    def covered(self, last_seq: int) -> None:
        """A checkpoint that released its replies in C (colo_primary_checkpoint
        with the proxy) covers every request <= last_seq: nothing left to ask for."""
        self._covered = max(self._covered, last_seq)

    # -- what the C side tells ------------------------------------------------------

    def _drain(self) -> None:
        if self._data_path is None:
            return
        holds: list[str] = []
        releases: dict[tuple[int, int], list[str]] = {}
        for ev in self._data_path.events():
            if ev.kind is native.ProxyEventKind.HOLD:
                holds.append(f"{ev.seq} ({ev.reason}) t={ev.t_ns}")
                if ev.seq > self._want:
                    self._want, self._want_reason = ev.seq, ev.reason
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
        self._kick()

    def _kick(self, *, tick: bool = False) -> None:
        if self._armed_ever and not self._unarmed(tick):
            return  # the armed checkpoint serves held replies, no need to ask
        if self._asker is None and self._want > max(self._covered, self._asked):
            self._asker = asyncio.create_task(self._ask(), name=f"proxy-asker-{self.domain}")

    def _unarmed(self, tick: bool) -> bool:
        """Nothing armed for a whole tick although replies are held: ask after all."""
        idle = asyncio.get_running_loop().time() - self._unarmed_since
        return tick and self._arms == 0 and idle > TICK

    async def _ask(self) -> None:
        """One RequestCheckpoint at a time, for the newest held reply: the
        checkpoint it brings includes every reply held before it was sent."""
        try:
            while self._want > max(self._covered, self._asked):
                seq, reason = self._want, self._want_reason
                if await self.request_checkpoint(seq, reason):
                    self._asked, self._asked_at = seq, asyncio.get_running_loop().time()
                else:
                    await asyncio.sleep(RETRY_AFTER_FAILURE)
        finally:
            self._asker = None

    def _tick(self) -> None:
        """Metrics, and a reply still held long after its checkpoint was
        promised is asked for again (a checkpoint can fail)."""
        self._refresh_metrics()
        loop = asyncio.get_running_loop()
        self._drain()
        if self._asked > self._covered and loop.time() - self._asked_at > 2 * TICK:
            self._asked = self._covered
        self._kick(tick=True)
        self._ticker = loop.call_later(TICK, self._tick)

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
            self._want = max(self._want, now.last_seq)
        self._seen = now

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._asker is not None:
            self._asker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asker
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
