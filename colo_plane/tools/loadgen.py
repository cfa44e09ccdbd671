"""`colo loadgen`: clients that write unique keys through the COLO proxy,
remember every write the service acknowledged, follow the domain to its new
primary after a failover, and at the end read everything back:

- acknowledged writes lost: an acknowledged SET whose value is not there;
- reads of values never written: a GET that returns a value no client sent.

Both must be 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from colo_plane import addresses
from colo_plane._proto import colo_pb2, colo_pb2_grpc

NONDETERMINISTIC = re.compile(rb" t=[0-9a-f]{16}$")
REPLY_TIMEOUT = 5.0


def strip_nondeterministic(reply: bytes) -> bytes:
    """A reply without the guest's nondeterministic field (its t=...)."""
    return NONDETERMINISTIC.sub(b"", reply.rstrip(b"\n"))


@dataclass
class Ledger:
    """What the clients know: what they sent and what was acknowledged."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    attempted: dict[str, set[str]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    ops: int = 0
    retries: int = 0
    reconnects: int = 0
    bad_reads: list[str] = field(default_factory=list)  # values never written
    errors: list[str] = field(default_factory=list)


Resolve = Callable[[], Awaitable[str]]


def resolver(coordinator: str | None, domain: str | None, address: str | None) -> Resolve:
    """Where the service is now: fixed, or the pair's endpoint from the coordinator."""
    if address:
        fixed = address

        async def static() -> str:
            return fixed

        return static
    if not coordinator or not domain:
        raise ValueError("give --address, or --coordinator and --domain")
    channel = grpc.aio.insecure_channel(coordinator)
    stub = colo_pb2_grpc.CoordinatorStub(channel)

    async def ask() -> str:
        reply = await stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=2.0)
        if not reply.pair.service_endpoint:
            raise ConnectionError(f"{domain} has no service endpoint yet")
        return str(reply.pair.service_endpoint)

    return ask


class Connection:
    def __init__(self, resolve: Resolve, ledger: Ledger) -> None:
        self.resolve = resolve
        self.ledger = ledger
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self, deadline: float) -> None:
        while True:
            try:
                host, port = addresses.parse(await self.resolve())
                async with asyncio.timeout(2.0):
                    self.reader, self.writer = await asyncio.open_connection(host, port)
                return
            except (OSError, TimeoutError, ConnectionError, grpc.aio.AioRpcError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def _drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def call(self, line: str, *, give_up: float = 60.0) -> bytes:
        """The reply to line, retrying the same line over a new connection
        (to wherever the service is now) until it is answered."""
        deadline = time.monotonic() + give_up
        first = True
        while True:
            if self.writer is None:
                await self._connect(deadline)
                if not first:
                    self.ledger.reconnects += 1
            assert self.reader is not None
            assert self.writer is not None
            try:
                self.writer.write(line.encode() + b"\n")
                await self.writer.drain()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancel that races a reply, and a stopped run would go on for ever.
                async with asyncio.timeout(REPLY_TIMEOUT):
                    reply = await self.reader.readline()
                if reply.endswith(b"\n"):
                    return reply
            except (OSError, TimeoutError, ConnectionError):
                pass
            self._drop()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {line.split(maxsplit=1)[0]} within {give_up:.0f} s")
            first = False
            self.ledger.retries += 1

    def close(self) -> None:
        self._drop()


async def _client(index: int, resolve: Resolve, ledger: Ledger, stop: asyncio.Event, run_id: str) -> None:
    conn = Connection(resolve, ledger)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            key, value = f"{run_id}-c{index}-k{n}", f"v{os.urandom(6).hex()}"
            ledger.attempted.setdefault(key, set()).add(value)
            start = time.perf_counter()
            reply = strip_nondeterministic(await conn.call(f"SET {key} {value}"))
            ledger.latencies.append(time.perf_counter() - start)
            ledger.ops += 1
            if reply == b"OK":
                ledger.acknowledged[key] = value
            else:
                ledger.errors.append(
                    f"SET {key}: the guest's key-value store is full: protect the domain with room for "
                    "more keys (colo protect --store-slots N)"
                    if reply == b"ERROR store full"
                    else f"SET {key}: {reply!r}"
                )
            if n % 4 == 0:  # read one of ours back now and then
                old = f"{run_id}-c{index}-k{n // 2}"
                got = strip_nondeterministic(await conn.call(f"GET {old}"))
                ledger.ops += 1
                _check_read(ledger, old, got)
    except TimeoutError as exc:
        ledger.errors.append(f"client {index}: {exc}")
    finally:
        conn.close()


def _check_read(ledger: Ledger, key: str, got: bytes) -> str | None:
    """The value read, or None; a value no client sent is recorded."""
    if got == b"NOT_FOUND":
        return None
    if not got.startswith(b"VALUE "):
        ledger.errors.append(f"GET {key}: {got!r}")
        return None
    value = got[6:].decode()
    if value not in ledger.attempted.get(key, set()):
        ledger.bad_reads.append(f"{key}={value}")
    return value


async def check(resolve: Resolve, ledger: Ledger, *, connections: int = 8) -> int:
    """Reads every acknowledged key back (over several connections); returns
    how many acknowledged writes were lost."""
    items = list(ledger.acknowledged.items())

    async def part(chunk: list[tuple[str, str]]) -> int:
        conn = Connection(resolve, ledger)
        lost = 0
        try:
            for key, value in chunk:
                got = _check_read(ledger, key, strip_nondeterministic(await conn.call(f"GET {key}")))
                if got != value:
                    lost += 1
        finally:
            conn.close()
        return lost

    return sum(await asyncio.gather(*(part(items[i::connections]) for i in range(connections))))


@dataclass(frozen=True)
class Report:
    clients: int
    seconds: float
    ops: int
    ops_per_second: float
    p50_ms: float
    p99_ms: float
    acknowledged_writes: int
    acknowledged_writes_lost: int
    reads_of_values_never_written: int
    retries: int
    reconnects: int
    errors: list[str]


async def run(
    resolve: Resolve,
    *,
    clients: int,
    seconds: float,
    stop: asyncio.Event | None = None,
    ledger: Ledger | None = None,
) -> Report:
    """Runs the clients for seconds (or until stop), then the check; pass a
    ledger to watch progress while it runs."""
    ledger = ledger if ledger is not None else Ledger()
    stop = stop or asyncio.Event()
    run_id = os.urandom(3).hex()
    start = time.monotonic()
    tasks = [asyncio.create_task(_client(i, resolve, ledger, stop, run_id)) for i in range(clients)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    lost = await check(resolve, ledger)
    lat = sorted(ledger.latencies) or [0.0]
    return Report(
        clients=clients,
        seconds=elapsed,
        ops=ledger.ops,
        ops_per_second=ledger.ops / elapsed,
        p50_ms=statistics.median(lat) * 1e3,
        p99_ms=lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
        acknowledged_writes=len(ledger.acknowledged),
        acknowledged_writes_lost=lost,
        reads_of_values_never_written=len(ledger.bad_reads),
        retries=ledger.retries,
        reconnects=ledger.reconnects,
        errors=ledger.errors[:20],
    )


def render(r: Report) -> str:
    return "\n".join(
        [
            f"clients {r.clients}  {r.seconds:.1f} s  {r.ops} ops  {r.ops_per_second:.0f} ops/s  "
            f"SET p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms",
            f"retries {r.retries}  reconnects {r.reconnects}",
            f"acknowledged writes {r.acknowledged_writes}",
            f"acknowledged writes lost = {r.acknowledged_writes_lost}",
            f"reads of values never written = {r.reads_of_values_never_written}",
            *(f"error: {e}" for e in r.errors),
        ]
    )
