"""One domain held by this agent, as primary or secondary of a pair, with
everything its role runs: the native domain, the data connection, and the
replication thread or link."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field

from colo_plane import native
from colo_plane._proto import colo_pb2
from colo_plane.agent.arming import Arming
from colo_plane.agent.nicproxy import PrimaryNic
from colo_plane.agent.primary import PrimaryLink
from colo_plane.agent.proxy import PrimaryProxy
from colo_plane.agent.secondary import SecondaryLoop
from colo_plane.agent.syncpoints import Role, Stats, SyncSink, Verify
from colo_plane.native.netproxy import NetProxy

log = logging.getLogger(__name__)


@dataclass
class Replica:
    domain: str
    generation: int
    role: Role
    spec: colo_pb2.DomainSpec
    dom: native.Domain
    verify: bool
    epoch: int = 0
    peer_host: str = ""
    state: colo_pb2.PairState = colo_pb2.PAIR_STATE_SYNCING
    sock: socket.socket | None = None
    link: PrimaryLink | None = None  # primary with a secondary
    loop: SecondaryLoop | None = None  # secondary
    thread: threading.Thread | None = None
    checkpoints: int = 0
    last_stats: Stats = field(default_factory=Stats)
    last_verify: Verify = field(default_factory=Verify)
    last_error: str = ""
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)  # one command changing the replica at a time
    accept_task: asyncio.Task[None] | None = None
    proxy: PrimaryProxy | PrimaryNic | None = None  # primary: the client side (sim service or NIC)
    arming: Arming | None = None  # primary, with its proxy: when checkpoints start (arming.py)
    proxy_task: asyncio.Task[None] | None = None  # secondary: runs forwarded requests
    nic: NetProxy | None = None  # secondary with spec.network: kept across promotion
    service_address: str = ""
    stood_down: bool = False  # superseded: paused, not serving, waiting for Release

    def disarm(self) -> None:
        """Ends an armed checkpoint that has not started (it holds busy while it waits)."""
        if self.arming is not None:
            self.arming.disarm()

    async def stop_serving(self) -> None:
        """Closes the primary's proxy and its arming: clients are cut off."""
        if self.arming is not None:
            await self.arming.close()
        if self.proxy is not None:
            await self.proxy.close()
        self.proxy = self.arming = None

    # -- the data connection ---------------------------------------------------

    def start_secondary(self, sock: socket.socket, sink: SyncSink) -> None:
        """Runs the secondary's loop on an authenticated connection."""
        self.sock = sock
        self.loop = SecondaryLoop(
            domain=self.domain,
            generation=self.generation,
            dom=self.dom,
            sock=sock,
            verify=self.verify,
            sink=sink,
        )
        self.thread = threading.Thread(target=self.loop.run, name=f"secondary-{self.domain}", daemon=True)
        self.thread.start()

    async def disconnect(self) -> None:
        """Closes the data and proxy connections and waits for the replication thread."""
        for task in (self.accept_task, self.proxy_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.accept_task = self.proxy_task = None
        if self.proxy is not None:
            await self.proxy.detach()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join)
            self.thread = None
            self.refresh()  # the loop's last word (its epoch) before the loop is dropped
        if self.link is not None:
            lock = self.link.lock  # a checkpoint in flight ends on the shut socket
            await asyncio.to_thread(lock.acquire)
            lock.release()
            self.link = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.loop = None

    async def close(self) -> None:
        await self.disconnect()
        await self.stop_serving()
        if self.nic is not None:
            await asyncio.to_thread(self.nic.close)  # joins its C thread
            self.nic = None
        await asyncio.to_thread(self.dom.close)  # joins the vCPU, unmaps guest memory: not on the loop

    # -- what GetStatus shows ----------------------------------------------------

    def whole_copy(self) -> bool:
        """A secondary holds a whole copy once its first boot was applied."""
        self.refresh()
        return self.epoch > 0

    def refresh(self) -> None:
        """Pulls the secondary thread's progress into this record."""
        if self.loop is None:
            return
        st = self.loop.state
        self.epoch = max(self.epoch, st.epoch)
        self.checkpoints = st.checkpoints
        if st.last_stats is not None:
            self.last_stats = st.last_stats
        if st.last_error:
            self.last_error = st.last_error
        if st.epoch and not st.finished:
            self.state = colo_pb2.PAIR_STATE_CHECKPOINTING if st.suspended else colo_pb2.PAIR_STATE_PROTECTED

    def _lock(self) -> threading.Lock | None:
        if self.loop is not None:
            return self.loop.lock
        if self.link is not None:
            return self.link.lock
        return None

    def digest(self) -> native.DomainHash:
        """Memory and context hash, never in the middle of a change."""
        lock = self._lock()
        if lock is None:
            return self.dom.hash()
        with lock:
            return self.dom.hash()

    def gone(self) -> bool:
        """The guest domain itself vanished (destroyed, crashed): this host holds no copy."""
        try:
            return not self.dom.present()
        except native.NativeError as exc:  # cannot tell: say present, the next look may know
            log.warning("%s: cannot tell whether the domain still exists: %s", self.domain, exc)
            return False

    def status(self, digest: native.DomainHash | None = None) -> colo_pb2.DomainStatus:
        self.refresh()
        out = colo_pb2.DomainStatus(
            domain=self.domain,
            generation=self.generation,
            epoch=self.epoch,
            role=colo_pb2.ROLE_PRIMARY if self.role is Role.PRIMARY else colo_pb2.ROLE_SECONDARY,
            state=self.state,
            paused=self.dom.paused,
            pages=self.dom.pages,
            backend=self.dom.backend,
            peer_host_id=self.peer_host,
            peer_connected=(self.link is not None and not self.link.broken)
            or (self.loop is not None and not self.loop.state.finished),
            last_checkpoint=self.last_stats.proto(),
            last_error=self.last_error,
            checkpoints=self.checkpoints,
            service_address=self.service_address,
            output_held=bool(self.proxy and self.proxy.held),
            held_replies=self.proxy.held if self.proxy else 0,
            domain_gone=self.gone(),
        )
        v = self.last_verify
        if v.checked:
            out.last_verify.CopyFrom(v.proto())
        if digest is not None:
            out.memory_hash, out.context_hash = digest.memory, digest.context
        return out
