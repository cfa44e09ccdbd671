"""Mutual authentication of a data connection before any stream record.

Both sides prove knowledge of the pair's secret (handed out by the
coordinator with the generation) by HMAC-SHA256 over fresh nonces of both
sides, so a stranger on the data port can neither read nor write a guest,
and a replayed transcript proves nothing.

    primary -> secondary  HELLO  "COLOAUTH" v1 | channel | len | domain | u64 generation | client nonce (32)
    secondary -> primary  CHALLENGE  "COLOAUTH" | server nonce (32) | server mac (32)
    primary -> secondary  PROOF  client mac (32)
    secondary -> primary  ACCEPT  "COLOOK\\0\\0"
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"COLOAUTH"
ACCEPT = b"COLOOK\0\0"
VERSION = 1
NONCE = 32
MAC = 32
MAX_NAME = 63
HELLO_HEAD = struct.Struct(">8sBBB")  # magic, version, channel, name length
DATA = 0  # channel: the replication stream
PROXY = 1  # channel: client requests forwarded to the secondary, and its replies


class HandshakeError(Exception):
    """The peer failed authentication; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Hello:
    domain: str
    generation: int
    nonce: bytes
    channel: int = DATA


def _mac(secret: bytes, role: bytes, hello: Hello, first: bytes, second: bytes) -> bytes:
    msg = (
        role
        + bytes([hello.channel])
        + hello.domain.encode()
        + struct.pack(">Q", hello.generation)
        + first
        + second
    )
    return hmac.new(secret, msg, hashlib.sha256).digest()


async def _recv_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise HandshakeError("closed", f"peer closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def _send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def client(
    sock: socket.socket, domain: str, generation: int, secret: bytes, *, timeout: float, channel: int = DATA
) -> None:
    """The primary's side; returns once both sides are proven."""
    async with asyncio.timeout(timeout):
        name = domain.encode()
        hello = Hello(domain, generation, os.urandom(NONCE), channel)
        head = HELLO_HEAD.pack(MAGIC, VERSION, channel, len(name))
        await _send(sock, head + name + struct.pack(">Q", generation) + hello.nonce)
        reply = await _recv_exact(sock, len(MAGIC) + NONCE + MAC)
        if reply[: len(MAGIC)] != MAGIC:
            raise HandshakeError("garbage", "secondary answered with something that is not a colo challenge")
        server_nonce = reply[len(MAGIC) : len(MAGIC) + NONCE]
        server_mac = reply[len(MAGIC) + NONCE :]
        if not hmac.compare_digest(
            server_mac, _mac(secret, b"colo-server", hello, hello.nonce, server_nonce)
        ):
            raise HandshakeError("bad_proof", "the secondary does not know the pair secret")
        await _send(sock, _mac(secret, b"colo-client", hello, server_nonce, hello.nonce))
        if await _recv_exact(sock, len(ACCEPT)) != ACCEPT:
            raise HandshakeError("refused", "the secondary refused our proof")


async def read_hello(sock: socket.socket) -> Hello:
    magic, version, channel, name_len = HELLO_HEAD.unpack(await _recv_exact(sock, HELLO_HEAD.size))
    if magic != MAGIC:
        raise HandshakeError("garbage", "connection does not start with a colo hello")
    if version != VERSION:
        raise HandshakeError("garbage", f"handshake version {version}, this agent speaks {VERSION}")
    if channel not in (DATA, PROXY):
        raise HandshakeError("garbage", f"unknown channel {channel}")
    if not 0 < name_len <= MAX_NAME:
        raise HandshakeError("garbage", f"domain name of {name_len} bytes")
    rest = await _recv_exact(sock, name_len + 8 + NONCE)
    try:
        domain = rest[:name_len].decode()
    except UnicodeDecodeError:
        raise HandshakeError("garbage", "domain name is not UTF-8") from None
    (generation,) = struct.unpack(">Q", rest[name_len : name_len + 8])
    return Hello(domain, generation, rest[name_len + 8 :], channel)


async def server(
    sock: socket.socket, find_secret: Callable[[Hello], bytes | None], *, timeout: float
) -> Hello:
    """The secondary's side: returns the proven hello, or raises."""
    async with asyncio.timeout(timeout):
        hello = await read_hello(sock)
        secret = find_secret(hello)
        if secret is None:
            raise HandshakeError(
                "unknown_pair",
                f"no pair {hello.domain!r} at generation {hello.generation} expects a primary here",
            )
        server_nonce = os.urandom(NONCE)
        await _send(
            sock, MAGIC + server_nonce + _mac(secret, b"colo-server", hello, hello.nonce, server_nonce)
        )
        proof = await _recv_exact(sock, MAC)
        if not hmac.compare_digest(proof, _mac(secret, b"colo-client", hello, server_nonce, hello.nonce)):
            raise HandshakeError("bad_proof", f"peer for {hello.domain!r} does not know the pair secret")
        await _send(sock, ACCEPT)
        return hello
