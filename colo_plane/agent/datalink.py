"""The data connection between the two agents of a pair: the secondary's
listener on the agent's data port, and the primary's connect.  Both end in
an authenticated, non-blocking socket handed to the native stream code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

from colo_plane import addresses, metrics
from colo_plane.agent import handshake

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0


def _future() -> asyncio.Future[socket.socket]:
    return asyncio.get_running_loop().create_future()


@dataclass
class Expected:
    """The connections a prepared secondary waits for: one a channel."""

    secret: bytes
    peer_host: str
    data: asyncio.Future[socket.socket] = field(default_factory=_future)
    proxy: asyncio.Future[socket.socket] = field(default_factory=_future)

    def channel(self, channel: int) -> asyncio.Future[socket.socket]:
        return self.proxy if channel == handshake.PROXY else self.data

    def cancel(self) -> None:
        for fut in (self.data, self.proxy):
            if not fut.done():
                fut.cancel()


def _configure(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # sync points are small and urgent


class DataListener:
    """Accepts primaries' connections for the secondaries this agent prepared."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self._expected: dict[tuple[str, int], Expected] = {}
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        host, port = addresses.parse(self._address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.create_task(self._accept_loop(), name="data-accept")
        return addresses.join(host, sock.getsockname()[1])

    def expect(self, domain: str, generation: int, secret: bytes, peer_host: str) -> Expected:
        """Futures for the authenticated connections of (domain, generation),
        one a channel; each channel is accepted once."""
        self.forget(domain)
        entry = Expected(secret, peer_host)
        self._expected[(domain, generation)] = entry
        return entry

    def forget(self, domain: str) -> None:
        """Stop expecting any connection for domain (a newer generation, release)."""
        for key in [k for k in self._expected if k[0] == domain]:
            self._expected.pop(key).cancel()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._handlers):
            task.cancel()
        if self._sock:
            self._sock.close()
        for key in list(self._expected):
            self.forget(key[0])

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self._sock)
            _configure(conn)
            task = asyncio.create_task(self._handle(conn, f"{peer[0]}:{peer[1]}"))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _secret_for(self, hello: handshake.Hello) -> bytes | None:
        entry = self._expected.get((hello.domain, hello.generation))
        if entry is None or entry.channel(hello.channel).done():
            return None
        return entry.secret

    async def _handle(self, conn: socket.socket, peer: str) -> None:
        try:
            hello = await handshake.server(conn, self._secret_for, timeout=HANDSHAKE_TIMEOUT)
        except handshake.HandshakeError as exc:
            self._refuse(conn, peer, exc.reason, str(exc))
            return
        except TimeoutError:
            self._refuse(conn, peer, "timeout", f"no complete handshake within {HANDSHAKE_TIMEOUT} s")
            return
        except OSError as exc:
            self._refuse(conn, peer, "closed", f"connection failed during the handshake: {exc}")
            return
        entry = self._expected.get((hello.domain, hello.generation))
        if entry is None or entry.channel(hello.channel).done():
            self._refuse(conn, peer, "unknown_pair", "pair was released during the handshake")
            return
        log.info(
            "%s connection from %s authenticated for %s generation %d",
            "proxy" if hello.channel == handshake.PROXY else "data",
            peer,
            hello.domain,
            hello.generation,
        )
        entry.channel(hello.channel).set_result(conn)

    @staticmethod
    def _refuse(conn: socket.socket, peer: str, reason: str, message: str) -> None:
        metrics.HANDSHAKE_FAILURES.labels(reason).inc()
        log.warning("refused data connection from %s: %s (%s)", peer, message, reason)
        conn.close()


async def connect(
    address: str,
    domain: str,
    generation: int,
    secret: bytes,
    *,
    timeout: float,
    channel: int = handshake.DATA,
) -> socket.socket:
    """The primary's side: connect to the secondary's data port and authenticate."""
    host, port = addresses.parse(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    _configure(sock)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        await handshake.client(sock, domain, generation, secret, timeout=HANDSHAKE_TIMEOUT, channel=channel)
    except BaseException:
        sock.close()
        raise
    return sock
