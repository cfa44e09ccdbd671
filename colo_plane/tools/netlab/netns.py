"""The namespace lab: a client, two guests and the agents' host, wired by veths.

    ns C (client)  c0 10.99.0.1 --veth-- up0 \\
                                               ns H (host): the agents' ports
    ns P (primary) g0 10.99.0.2 --veth-- pg   /   (up0 uplink, pg and sg guest NICs)
    ns S (second.) g0 10.99.0.2 --veth-- sg  /

Both guests carry the same addresses and MAC, as a VM and its replica do.
Everything is made in namespaces of this lab's own and removed by close();
no address outside them is ever used.  Needs root and `ip`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

CLIENT_IP = "10.99.0.1"
GUEST_IP = "10.99.0.2"
CLIENT_MAC = "02:c0:10:00:00:01"
GUEST_MAC = "02:c0:10:00:00:02"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """fn() run on a thread that entered namespace name (sockets it makes stay there)."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {name}")
        finally:
            os.close(fd)
        try:
            out.append(fn())
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


class Lab:
    def __init__(self, tag: str | None = None) -> None:
        t = tag or f"{os.getpid() % 100000}"
        self.client, self.primary, self.secondary, self.host = (f"np{t}{x}" for x in "cpsh")
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        for ns in (self.client, self.primary, self.secondary, self.host):
            ip("netns", "add", ns)
            self._made.append(ns)
        ip("-n", self.host, "link", "set", "lo", "up")  # agents run here too (their loopback)
        self._veth(self.client, "c0", "up0", CLIENT_MAC, CLIENT_IP)
        self._veth(self.primary, "g0", "pg", GUEST_MAC, GUEST_IP)
        self._veth(self.secondary, "g0", "sg", GUEST_MAC, GUEST_IP)
        # Static neighbours: the test needs no ARP race between the two guests.
        ip("-n", self.client, "neigh", "add", GUEST_IP, "lladdr", GUEST_MAC, "dev", "c0", "nud", "permanent")
        for ns in (self.primary, self.secondary):
            ip("-n", ns, "neigh", "add", CLIENT_IP, "lladdr", CLIENT_MAC, "dev", "g0", "nud", "permanent")

    def _veth(self, ns: str, inner: str, outer: str, mac: str, addr: str) -> None:
        ip("-n", self.host, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        ip("-n", ns, "link", "set", inner, "address", mac)
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.host, "link", "set", outer, "up")

    def bridge(self, on: bool) -> None:
        """The baseline: up0 and pg bridged straight (no proxy may run then)."""
        if on:
            ip("-n", self.host, "link", "add", "br0", "type", "bridge")
            ip("-n", self.host, "link", "set", "br0", "up")
            for dev in ("up0", "pg"):
                ip("-n", self.host, "link", "set", dev, "master", "br0")
        else:
            ip("-n", self.host, "link", "del", "br0")

    def start_server(self, ns: str, port: int, probability: float = 0.0) -> None:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "colo_plane.tools.netlab.kvserver",
                "--port",
                str(port),
                "--random",
                str(probability),
            ],
            stdout=subprocess.PIPE,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"kvserver in {ns} did not start")

    def connect(self, port: int, timeout: float = 10.0) -> socket.socket:
        """A client connection from the client namespace to the guest."""

        def make() -> socket.socket:
            return socket.create_connection((GUEST_IP, port), timeout=timeout)

        return in_netns(self.client, make)

    def tcp_stats(self, ns: str) -> dict[str, int]:
        """The namespace's TCP counters (/proc/net/snmp's Tcp: lines)."""
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], check=True, capture_output=True, text=True
        ).stdout
        rows = [line.split()[1:] for line in out.splitlines() if line.startswith("Tcp:")]
        return dict(zip(rows[0], map(int, rows[1]), strict=True))

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self._procs.clear()
        for ns in reversed(self._made):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", ns)
        self._made.clear()


def available() -> bool:
    """Root and `ip netns`: what the lab needs."""
    return (
        os.geteuid() == 0
        and subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode == 0
    )


@contextlib.contextmanager
def lab(tag: str | None = None) -> Iterator[Lab]:
    with Lab(tag) as lb:
        yield lb
