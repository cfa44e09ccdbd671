"""A TCP relay that can stop delivering one direction: a one-way partition
between two real processes on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class OneWayRelay:
    """Listens on a free loopback port and relays each connection to target.
    While `cut` is set, bytes from the dialling side are read and dropped
    (nothing reaches the target); bytes back from the target still flow."""

    def __init__(self, target: tuple[str, int], dial: Callable[[], socket.socket] | None = None) -> None:
        self.target = target
        self.dial = dial or (lambda: socket.create_connection(self.target, timeout=2))
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = self.dial()
            except OSError:
                down.close()
                continue
            self._socks += [down, up]
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, droppable: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if droppable and self.cut.is_set():
                    continue  # lost on the way: the sender's TCP thinks it was delivered
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
