"""The COLO proxy (DESIGN.md section 5).

On the primary it owns the domain's client address: each request line gets
a sequence number, goes to the primary guest and is forwarded to the
secondary; the secondary's reply comes back and is compared with the
primary's.  Equal: released.  Different, or missing past the reply
timeout: a checkpoint is requested and the primary's reply is held until a
checkpoint whose state includes the request has reached SECONDARY_RESUMED.
Replies leave in request order on each client connection.  Unprotected,
replies go straight out; a primary that lost its secondary on its own keeps
holding until the coordinator says it runs unprotected.

On the secondary it runs the forwarded requests on the secondary guest, in
the primary's order, skipping those a checkpoint already carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from colo_plane import addresses, metrics, native

log = logging.getLogger(__name__)

FRAME = struct.Struct(">QI")  # seq, length
MAX_LINE = 512
GUEST_POLL = 0.0005  # seconds between tries while the guest is paused
PAUSED = native.ErrorCode.PAUSED


async def read_frames(reader: asyncio.StreamReader, buf: bytearray) -> list[tuple[int, bytes]]:
    """Every whole frame that has arrived (at least one; one wake-up, many
    frames).  ConnectionError at the end of the stream."""
    frames: list[tuple[int, bytes]] = []
    while not frames:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise ConnectionError("end of stream")
        buf += chunk
        off = 0
        while len(buf) - off >= FRAME.size:
            seq, length = FRAME.unpack_from(buf, off)
            if length > MAX_LINE + 64:
                raise ValueError(f"proxy frame of {length} bytes")
            if len(buf) - off - FRAME.size < length:
                break
            frames.append((seq, bytes(buf[off + FRAME.size : off + FRAME.size + length])))
            off += FRAME.size + length
        del buf[:off]
    return frames


def frame(seq: int, payload: bytes) -> bytes:
    return FRAME.pack(seq, len(payload)) + payload


async def serve_guest(dom: native.Domain, seq: int, line: bytes, buf: native.ReplyBuffer) -> bytes:
    """The guest's reply to one request, waiting while it is paused."""
    while True:
        try:
            return dom.serve(seq, line, buf)
        except native.BackendError as exc:
            if exc.code != PAUSED:
                raise
        await asyncio.sleep(GUEST_POLL)


def error_reply(exc: native.NativeError) -> bytes:
    return f"ERROR {exc.detail}\n".encode()


@dataclass
class Connection:
    """One client: its replies leave in the order of its requests."""

    writer: asyncio.StreamWriter
    order: deque[Pending] = field(default_factory=deque)


@dataclass
class Pending:
    seq: int
    reply: bytes
    conn: Connection
    sent: float = 0.0  # loop time it was forwarded to the secondary
    secondary: bytes | None = None
    releasable: bool = False
    asked: bool = False  # a checkpoint was requested for it


# request_checkpoint(seq, reason: "mismatch" | "timeout")
RequestCheckpoint = Callable[[int, str], None]


class PrimaryProxy:
    def __init__(
        self,
        domain: str,
        dom: native.Domain,
        *,
        request_checkpoint: RequestCheckpoint,
        reply_timeout: float,
    ) -> None:
        self.domain = domain
        self.dom = dom
        self.request_checkpoint = request_checkpoint
        self.reply_timeout = reply_timeout
        self.protected = False  # replies wait for the secondary's
        self.unprotected = True  # replies go straight out (set by the coordinator)
        self.covered = 0  # every seq <= covered is in a checkpoint the secondary resumed from
        self.next_seq = 0
        self.pending: dict[int, Pending] = {}
        self.held = 0
        self._buf = native.ReplyBuffer()
        self._lock = asyncio.Lock()  # one request at a time into the guest, in seq order
        self._server: asyncio.Server | None = None
        self._link: asyncio.StreamWriter | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> str:
        with contextlib.suppress(native.NativeError):
            self.next_seq = self.dom.service_seq()  # sequence numbers go on across failovers
        self._server = await asyncio.start_server(self._client, host, port, limit=MAX_LINE * 4)
        sock = self._server.sockets[0]
        return addresses.join(host, sock.getsockname()[1])

    # -- the secondary -------------------------------------------------------------

    async def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A secondary is in sync (first boot done): compare from now on."""
        await self.detach()
        self._link = writer
        self.protected, self.unprotected = True, False
        self._link_task = asyncio.create_task(self._replies(reader), name=f"proxy-replies-{self.domain}")
        self._sweeper = asyncio.create_task(self._sweep(), name=f"proxy-timeouts-{self.domain}")

    async def detach(self) -> None:
        """The secondary is gone: hold what is not yet released (until unprotect())."""
        for task in (self._link_task, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._link_task = self._sweeper = None
        if self._link is not None:
            self._link.close()
            self._link = None

    def unprotect(self) -> int:
        """The coordinator says the secondary is lost: release everything held."""
        self.protected, self.unprotected = False, True
        released = 0
        for p in list(self.pending.values()):
            if not p.releasable:
                released += 1
            self._releasable(p)
        return released

    def checkpoint_done(self, epoch: int, last_seq: int) -> None:
        """SECONDARY_RESUMED of checkpoint epoch, whose state includes every request <= last_seq."""
        self.covered = max(self.covered, last_seq)
        now = time.monotonic_ns()
        for p in [p for p in self.pending.values() if p.seq <= self.covered]:
            if p.asked and not p.releasable:
                # The release rule, on the record: tests check it against the sync points.
                log.info(
                    "%s: released held reply seq=%d after epoch=%d resumed t=%d",
                    self.domain,
                    p.seq,
                    epoch,
                    now,
                )
            self._releasable(p)

    async def _replies(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        try:
            while True:
                for seq, reply in await read_frames(reader, buf):
                    p = self.pending.get(seq)
                    if p is None or p.releasable:
                        continue
                    p.secondary = reply
                    if reply == p.reply:
                        self._releasable(p)
                    else:
                        metrics.DIVERGENCES.labels("mismatch").inc()
                        self._ask(p, "mismatch")
        except (ConnectionError, ValueError) as exc:
            log.warning("%s: proxy link to the secondary lost (%s); holding output", self.domain, exc)

    def _ask(self, p: Pending, reason: str) -> None:
        if p.asked or p.seq <= self.covered:
            return
        p.asked = True
        if not p.releasable:
            self.held += 1
            log.info("%s: holding reply seq=%d (%s) t=%d", self.domain, p.seq, reason, time.monotonic_ns())
        self.request_checkpoint(p.seq, reason)

    async def _sweep(self) -> None:
        """Replies the secondary did not answer within reply_timeout count as
        diverged (one sweep for all, not a timer a request)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.reply_timeout / 4)
            late = loop.time() - self.reply_timeout
            for p in list(self.pending.values()):
                if p.sent and p.sent < late and p.secondary is None and not p.releasable and not p.asked:
                    metrics.DIVERGENCES.labels("timeout").inc()
                    self._ask(p, "timeout")

    # -- clients ----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer)
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while line := await reader.readline():
                if not line.endswith(b"\n"):
                    break  # the client closed mid-line
                await self._request(conn, line[:-1].rstrip(b"\r"))
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            for p in conn.order:
                self.pending.pop(p.seq, None)
            writer.close()
            if task is not None:
                self._clients.discard(task)

    async def _request(self, conn: Connection, line: bytes) -> None:
        async with self._lock:
            self.next_seq += 1
            seq = self.next_seq
            try:
                reply = await serve_guest(self.dom, seq, line, self._buf)
            except native.NativeError as exc:
                reply = error_reply(exc)  # refused by the guest: it changed nothing
            p = Pending(seq, reply, conn)
            conn.order.append(p)
            self.pending[seq] = p
            metrics.PROXY_REQUESTS.inc()
            if self.unprotected:
                self._releasable(p)
            elif self._link is not None:
                self._link.write(frame(seq, line))
                p.sent = asyncio.get_running_loop().time()
        self._flush(conn)

    def _releasable(self, p: Pending) -> None:
        if p.releasable:
            return
        p.releasable = True
        if p.asked:
            self.held -= 1
        self._flush(p.conn)

    def _flush(self, conn: Connection) -> None:
        while conn.order and conn.order[0].releasable:
            p = conn.order.popleft()
            if self.pending.pop(p.seq, None) is not None:
                conn.writer.write(p.reply)

    async def close(self) -> None:
        await self.detach()
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class SecondaryProxy:
    """Runs the primary's forwarded requests on the secondary guest; the
    guest itself refuses those a checkpoint already carried (DUPLICATE)."""

    def __init__(self, domain: str, dom: native.Domain) -> None:
        self.domain = domain
        self.dom = dom
        self._buf = native.ReplyBuffer()

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        try:
            while True:
                out = bytearray()
                for seq, line in await read_frames(reader, buf):
                    try:
                        reply = await serve_guest(self.dom, seq, line, self._buf)
                    except native.NativeError as exc:
                        if exc.code == native.ErrorCode.DUPLICATE:
                            continue  # its effect arrived with a checkpoint's pages
                        reply = error_reply(exc)
                    out += frame(seq, reply)
                if out:
                    writer.write(out)  # one write for all the replies of one wake-up
                    await writer.drain()
        except (ConnectionError, ValueError) as exc:
            log.info("%s: proxy link from the primary closed (%s)", self.domain, exc)
        finally:
            writer.close()
