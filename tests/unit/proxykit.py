"""Plain helpers for the proxy's unit tests (importable by name): the
link's frames, a client's lines, a secondary's end of the link."""

from __future__ import annotations

import socket
import struct

from colo_plane.native import Proxy

FRAME = struct.Struct(">QI")


def frame(seq: int, payload: bytes) -> bytes:
    return FRAME.pack(seq, len(payload)) + payload


def read_frames(sock: socket.socket, count: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    sock.settimeout(timeout)
    buf, out = b"", list[tuple[int, bytes]]()
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, "link closed"
        buf += chunk
        while len(buf) >= FRAME.size:
            seq, n = FRAME.unpack_from(buf)
            if len(buf) < FRAME.size + n:
                break
            out.append((seq, buf[FRAME.size : FRAME.size + n]))
            buf = buf[FRAME.size + n :]
    return out


def read_line(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    return buf


def attach(p: Proxy) -> socket.socket:
    ours, theirs = socket.socketpair()
    p.attach(theirs)
    return ours


def client(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)
