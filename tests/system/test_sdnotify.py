"""systemd's notify protocol, as systemd would see it: a daemon started with
NOTIFY_SOCKET says READY=1 once it serves, pings WATCHDOG=1 at half of
WATCHDOG_USEC, and says STOPPING=1 at SIGTERM (the units are Type=notify
with a WatchdogSec=)."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from coordinated import start_coordinator

pytestmark = pytest.mark.system


def test_ready_watchdog_and_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
    coord = start_coordinator(tmp_path)
    try:
        messages = []
        deadline = time.monotonic() + 10
        while sum(m == "WATCHDOG=1" for m in messages) < 3 and time.monotonic() < deadline:
            messages.append(sock.recv(4096).decode())
        assert messages[0].startswith("READY=1\nSTATUS=serving gRPC on "), messages
        assert messages.count("WATCHDOG=1") >= 3
        coord.proc.send_signal(signal.SIGTERM)
        while (message := sock.recv(4096).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert coord.proc.wait(30) == 0
    finally:
        coord.stop()
        sock.close()
