"""Loopback TCP for the benches: a connected pair, as two agents on one host
would have; the raw C baseline over it; and a probe of the machine's noise."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Callable

from colo_plane.tools.bench import rawio

PROBE_BYTES = 64 << 20  # ~30 ms at today's rate: short enough to run between any two phases


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(sender, receiver) connected over 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    return sender, receiver


def run_pair(send: Callable[[], None], recv: Callable[[], None]) -> float:
    """Runs send in a thread and recv here; seconds from start to both done."""
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            send()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=sender)
    start = time.perf_counter()
    thread.start()
    recv()
    thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


class RawLink:
    """The raw C baseline: bytes moved over one loopback connection, kept
    open between measurements (as the stream's is), in chunk-sized writes
    walking through a buffer of buffer_bytes."""

    def __init__(self, buffer_bytes: int, chunk: int) -> None:
        self.tx_buf, self.rx_buf = rawio.RawBuffer(buffer_bytes), rawio.RawBuffer(buffer_bytes)
        self.chunk = chunk
        self.tx, self.rx = tcp_pair()

    def seconds(self, total: int) -> float:
        return run_pair(
            lambda: rawio.raw_send(self.tx, self.tx_buf, total, self.chunk),
            lambda: rawio.raw_recv(self.rx, self.rx_buf, total, self.chunk),
        )

    def close(self) -> None:
        self.tx.close()
        self.rx.close()

    def __enter__(self) -> RawLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(sock: socket.socket, buffer_bytes: int, chunk: int, total: int, count: int) -> None:
    """RawPeer's receiver: count transfers of total bytes, a byte back after each."""
    buf = rawio.RawBuffer(buffer_bytes)
    for _ in range(count):
        rawio.raw_recv(sock, buf, total, chunk)
        sock.sendall(b"\x01")
    sock.close()


class RawPeer:
    """The ideal of a primary's pause: total bytes written from the calling
    thread into a connection that a process of its own drains, as the
    secondary does; timed until the last write returns, as the pause is
    (native/checkpoint.c).  The receiver's byte back after each transfer is
    not timed: it only keeps the next transfer from starting on a full
    socket.  No thread is started per transfer, as none is per checkpoint:
    under load the thread-per-transfer baseline (RawLink) had a p99 5-20x
    its median, worse than the pauses it was to be the ideal of."""

    def __init__(self, buffer_bytes: int, chunk: int, total: int, count: int) -> None:
        self.buf = rawio.RawBuffer(buffer_bytes)
        self.chunk, self.total, self.left = chunk, total, count
        self.tx, rx = tcp_pair()
        ctx = multiprocessing.get_context("fork")
        self._child = ctx.Process(target=_drain, args=(rx, buffer_bytes, chunk, total, count))
        self._child.start()
        rx.close()

    def seconds(self) -> float:
        if self.left == 0:
            raise RuntimeError("bench: RawPeer: no transfers left")
        self.left -= 1
        start = time.perf_counter()
        rawio.raw_send(self.tx, self.buf, self.total, self.chunk)
        elapsed = time.perf_counter() - start
        if self.tx.recv(1) != b"\x01":
            raise RuntimeError("bench: the raw receiver ended early")
        return elapsed

    def close(self) -> None:
        self.tx.close()  # a receiver still waiting for bytes sees the end and fails
        self._child.join(30)
        if self._child.is_alive():
            self._child.kill()
            self._child.join()


class Probe:
    """A fixed piece of work in C (64 MiB over loopback TCP) for benches with
    no baseline of their own: its GB/s across rounds is the machine's noise."""

    def __init__(self) -> None:
        self._link = RawLink(PROBE_BYTES, 1 << 20)
        self.gbps()  # first touch of the buffers: page faults are not noise

    def gbps(self) -> float:
        return PROBE_BYTES / self._link.seconds(PROBE_BYTES) / 1e9

    def close(self) -> None:
        self._link.close()
