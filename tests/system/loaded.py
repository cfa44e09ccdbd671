"""A protected pair on a host kept busy by CPU burners, and how often its
live agents are declared lost: the system test of failure detection under
load, and the script that measures false losses per hour.

    .venv/bin/python tests/system/loaded.py --seconds 300 --burners 4

Burners are `python -c` busy loops that end by themselves after the run
(and are killed with it): nothing is left running."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from coordinated import CoordinatorProcess, sim_spec, start_cluster, wait_for

from colo_plane._proto import colo_pb2
from colo_plane.tools import loadgen

BURN = "import time, sys\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass\n"


@contextmanager
def burners(count: int, seconds: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    """count CPU-bound processes for at most seconds (they stop on their own)."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN, str(seconds)]) for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


@dataclass
class Outcome:
    seconds: float
    losses: int  # "agent X lost" lines in the coordinator's log
    failovers: float  # colo_failovers_total, every cause
    generation_before: int
    generation_after: int
    detail: list[str]

    @property
    def per_hour(self) -> float:
        return self.losses * 3600.0 / self.seconds


def _losses(coord: CoordinatorProcess) -> list[str]:
    return [line for line in coord.log().splitlines() if " lost: " in line and "agent " in line]


def _clients(coordinator: str, count: int, seconds: float) -> threading.Thread:
    """count loadgen clients against vm1's service for seconds, in a thread."""

    async def clients() -> None:
        resolve = loadgen.resolver(coordinator, "vm1", None)  # its channel belongs to this loop
        await loadgen.run(resolve, clients=count, seconds=seconds)

    def go() -> None:
        asyncio.run(clients())

    thread = threading.Thread(target=go, name="loadgen", daemon=True)
    thread.start()
    return thread


def run(tmp: Path, *, seconds: float, burner_count: int, interval: float = 0.3, clients: int = 0) -> Outcome:
    """A pair host-a -> host-b (host-c spare), burners beside them for seconds,
    and clients using the protected service meanwhile."""
    coord, agents = start_cluster(tmp, 3)
    try:
        coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(
                spec=sim_spec("vm1", interval=interval), primary_host="host-a", secondary_host="host-b"
            ),
            timeout=30,
        )
        wait_for(
            "vm1 PROTECTED", lambda: coord.pair("vm1").state == colo_pb2.PAIR_STATE_PROTECTED, timeout=30
        )
        before = coord.pair("vm1").generation
        failovers_before = coord.metric("colo_failovers_total")
        with burners(burner_count, seconds + 5):
            t0 = time.monotonic()
            load = _clients(coord.address, clients, seconds) if clients else None
            time.sleep(seconds)
            took = time.monotonic() - t0
            if load is not None:
                load.join(timeout=30)
        lines = _losses(coord)
        return Outcome(
            took,
            len(lines),
            coord.metric("colo_failovers_total") - failovers_before,
            before,
            coord.pair("vm1").generation,
            lines,
        )
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--burners", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.3, help="the pair's checkpoint interval")
    parser.add_argument("--clients", type=int, default=0, help="loadgen clients on the protected service")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = run(
            Path(tmp),
            seconds=args.seconds,
            burner_count=args.burners,
            interval=args.interval,
            clients=args.clients,
        )
    for line in out.detail:
        print(line)
    print(
        f"{out.seconds:.0f} s with {args.burners} CPU burners, {args.clients} clients: "
        f"{out.losses} live agent(s) declared lost "
        f"({out.per_hour:.0f}/hour), {out.failovers:.0f} failover(s), generation "
        f"{out.generation_before} -> {out.generation_after}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
