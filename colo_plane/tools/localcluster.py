"""A coordinator and agents as real processes on loopback: what `colo
demo` (and the benches that need a cluster) run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

COLO = [sys.executable, "-m", "colo_plane.cli"]
READY_TIMEOUT = 30.0


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    info: dict[str, str]
    log: Path

    @property
    def grpc(self) -> str:
        return self.info["grpc"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: a host that dies without a word."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal it (SIGTERM: a clean exit) and wait; kill it if it hangs."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(workdir: Path, name: str, args: list[str], wrap: Sequence[str] = ()) -> Process:
    """Starts `colo ARGS --ready-file ...` (under the command WRAP, which
    execs its arguments: a test's namespace), logging to workdir/NAME.log,
    and waits until it says where it listens."""
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*wrap, *COLO, *args, "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; its log ({log}):\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        return Process(name, proc, json.loads(ready.read_text()), log)
    except BaseException:
        # Not the caller's yet: a SIGTERM (or anything) while it starts must not orphan it.
        proc.kill()
        proc.wait()
        raise


def coordinator_args(db: Path, *extra: str, listen: str = "127.0.0.1:0") -> list[str]:
    return ["coordinator", "--listen", listen, "--db", str(db), "--metrics-listen", "127.0.0.1:0", *extra]


def agent_args(host_id: str, coordinator: str, *extra: str) -> list[str]:
    return [
        "agent",
        "--host-id",
        host_id,
        "--listen",
        "127.0.0.1:0",
        "--data-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--coordinator",
        coordinator,
        *extra,
    ]


@dataclass
class LocalCluster:
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    def _start(self, name: str, args: list[str]) -> Process:
        process = launch(self.workdir, name, args)
        self.processes.append(process)
        return process

    def start_coordinator(self, *extra: str, listen: str = "127.0.0.1:0") -> Process:
        return self._start("coordinator", coordinator_args(self.workdir / "colo.db", *extra, listen=listen))

    def start_agent(self, host_id: str, coordinator: str, *extra: str) -> Process:
        return self._start(host_id, agent_args(host_id, coordinator, *extra))

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
