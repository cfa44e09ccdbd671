"""A small TCP key-value server: the "guest service" of the NIC path's tests.

Lines in, lines out: ``SET k v`` -> ``OK r``, ``GET k`` -> ``VAL v r``,
``ECHO n`` then n bytes -> the same n bytes, ``BULK n`` -> n bytes of a
fixed pattern.  r is ``00000000``, or with probability --random 8 random
hex digits: the nondeterministic field two guests disagree on.  Run in a
namespace: ``python -m colo_plane.tools.netlab.kvserver --port 7000``.
"""

from __future__ import annotations

import argparse
import random
import socketserver
import threading

CHUNK = 65536
PATTERN = bytes(range(256)) * (CHUNK // 256)


class Store:
    def __init__(self, probability: float) -> None:
        self.data: dict[str, str] = {}
        self.lock = threading.Lock()
        self.probability = probability
        self.rng = random.Random()

    def field(self) -> str:
        with self.lock:
            if self.rng.random() < self.probability:
                return f"{self.rng.getrandbits(32):08x}"
        return "00000000"


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        store = self.server.store
        for raw in self.rfile:
            words = raw.decode(errors="replace").split()
            if not words:
                continue
            reply = self._one(store, words)
            if reply is not None:
                self.wfile.write(reply)
                self.wfile.flush()

    def _one(self, store: Store, words: list[str]) -> bytes | None:
        cmd = words[0].upper()
        if cmd == "SET" and len(words) == 3:
            with store.lock:
                store.data[words[1]] = words[2]
            return f"OK {store.field()}\n".encode()
        if cmd == "GET" and len(words) == 2:
            with store.lock:
                value = store.data.get(words[1], "-")
            return f"VAL {value} {store.field()}\n".encode()
        if cmd == "ECHO" and len(words) == 2:
            self._echo(int(words[1]))
            return None
        if cmd == "BULK" and len(words) == 2:
            self._bulk(int(words[1]))
            return None
        return b"ERR\n"

    def _echo(self, n: int) -> None:
        while n > 0:
            chunk = self.rfile.read1(min(n, CHUNK))
            if not chunk:
                return
            self.wfile.write(chunk)
            n -= len(chunk)
        self.wfile.flush()

    def _bulk(self, n: int) -> None:
        while n > 0:
            self.wfile.write(PATTERN[: min(n, CHUNK)])
            n -= CHUNK
        self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, port: int, probability: float) -> None:
        self.store = Store(probability)
        super().__init__(("0.0.0.0", port), Handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--random", type=float, default=0.0, help="probability of a random reply field")
    args = ap.parse_args()
    if not 0.0 <= args.random <= 1.0:
        ap.error("--random is a probability, 0..1")
    with Server(args.port, args.random) as srv:
        print("ready", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
