"""systemd's notify protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET.
READY=1 once the daemon serves (so "started" means "serving"), WATCHDOG=1
from the event loop at half of $WATCHDOG_USEC (a wedged loop stops the
pings and systemd restarts the daemon), STOPPING=1 at SIGTERM.  Nothing
happens when systemd did not start the process.  A few lines: no library."""

from __future__ import annotations

import asyncio
import os
import socket


def notify(state: str) -> bool:
    """Sends state ("READY=1", ...); False when there is no one to tell."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # @: the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec=), None when not asked."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def _watchdog(every: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(every)


def ready(status: str) -> asyncio.Task[None] | None:
    """Tells systemd the daemon serves; starts the watchdog pings if asked for."""
    notify(f"READY=1\nSTATUS={status}")
    every = watchdog_interval()
    return asyncio.create_task(_watchdog(every), name="sd-watchdog") if every else None


def stopping(task: asyncio.Task[None] | None) -> None:
    notify("STOPPING=1")
    if task is not None:
        task.cancel()
