"""Compare and hold: a differing or missing reply is held until a checkpoint covers it."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest

from colo_plane.native import ArmWhy, Disarmed
from colo_plane.native.arm import Arm
from colo_plane.native.netproxy import NetProxy, NetProxyConfig, NetRole, open_port
from colo_plane.tools.netlab import netns
from tests.netproxy.conftest import PORT, MakePair


def _events(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_differing_reply_is_held_until_a_checkpoint_covers_it(make_pair: MakePair) -> None:
    pair = make_pair(secondary_random=1.0)  # every secondary reply differs
    with pair.lab.connect(PORT) as c:
        c.sendall(b"SET a 1\n")
        assert _events(pair.primary.event_fd, 5.0), "no divergence reported"
        c.settimeout(0.5)
        try:
            got = c.recv(100)
        except TimeoutError:
            got = b""
        assert got == b"", "a diverged reply left before any checkpoint"
        st = pair.primary.stats()
        assert st.mismatch["tcp"] == 1 and st.held >= 1
        pair.primary.checkpoint_done(1, pair.primary.last_seq)  # the test's checkpoint completes
        c.settimeout(5.0)
        assert c.recv(100) == b"OK 00000000\n"
        assert pair.primary.stats().ckpt_released >= 1


def test_missing_secondary_output_times_out_and_is_held(make_pair: MakePair) -> None:
    pair = make_pair(secondary_server=False, compare_timeout=0.3)
    # The SYN-ACK waits for the secondary's, which never comes (its port is
    # closed): connect blocks until the SYN-ACK is released.
    done: list[socket.socket] = []
    t = threading.Thread(target=lambda: done.append(pair.lab.connect(PORT, timeout=10.0)))
    t.start()
    assert _events(pair.primary.event_fd, 5.0)
    assert pair.primary.stats().timeout["tcp"] == 1
    t.join(0.5)
    assert not done, "the handshake went through with the secondary silent"
    pair.primary.checkpoint_done(1, pair.primary.last_seq)
    t.join(10)
    assert done
    done[0].close()


def test_malformed_link_frame_drops_the_link_and_holds_output(make_pair: MakePair) -> None:
    pair = make_pair()
    # Replace the secondary with a hand-written peer that sends garbage.
    pair.secondary.close()
    a, b = socket.socketpair()
    pair.primary.close()
    p = NetProxy(
        NetProxyConfig(NetRole.PRIMARY), open_port("pg", pair.lab.host), open_port("up0", pair.lab.host)
    )
    try:
        p.attach(a)
        b.sendall(struct.pack(">BBHIQ", 2, 7, 0, 0, 0))  # a reserved byte set
        assert _events(p.event_fd, 5.0)
        assert p.stats().link_lost == 1
        done: list[socket.socket] = []
        t = threading.Thread(target=lambda: done.append(pair.lab.connect(PORT, timeout=10.0)))
        t.start()
        t.join(1.0)
        assert not done, "output left with no link to compare against"
        assert p.stats().held >= 1
        p.unprotect()
        t.join(10)
        assert done
        done[0].close()
    finally:
        p.close()
        b.close()


def _settled(p: NetProxy, quiet: float = 0.3, timeout: float = 10.0) -> None:
    """Waits until the proxy's frame counts stop moving for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        st = p.stats()
        now = (st.ingress, st.egress, st.held, st.held_bytes)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)
    raise AssertionError(f"the proxy's counts never settled: {last}")


def test_compare_resumes_in_step_after_a_checkpoint(lab: netns.Lab) -> None:
    lab.start_server(lab.primary, PORT)
    lab.start_server(lab.secondary, PORT)
    p = NetProxy(NetProxyConfig(NetRole.PRIMARY), open_port("pg", lab.host), open_port("up0", lab.host))
    s = NetProxy(NetProxyConfig(NetRole.SECONDARY, keep_offsets=True), open_port("sg", lab.host))
    try:
        with lab.connect(PORT) as c:  # unprotected: only the primary guest learns x
            c.sendall(b"SET x 1\n")
            assert c.recv(100) == b"OK 00000000\n"
        time.sleep(1.0)  # its close ends unprotected too
        a, b = socket.socketpair()
        p.attach(a)
        s.attach(b)
        with lab.connect(PORT) as c:
            f = c.makefile("rwb")
            f.write(b"GET x\n")  # "VAL 1" here, "VAL -" there: diverges
            f.flush()
            assert _events(p.event_fd, 5.0)
            for i in range(5):  # sent while the connection is diverged
                f.write(f"SET y {i}\n".encode())
                f.flush()
            _settled(p)  # both guests' answers in: a busy box can take longer than any fixed sleep
            assert p.stats().mismatch["tcp"] == 1
            p.checkpoint_done(1, p.last_seq)
            assert f.readline() == b"VAL 1 00000000\n"
            for _ in range(5):
                assert f.readline() == b"OK 00000000\n"
            for i in range(20):  # compared again, and equal: both guests are in step
                f.write(f"SET z {i}\n".encode())
                f.flush()
                assert f.readline() == b"OK 00000000\n"
        st = p.stats()
        assert st.divergences == 1 and st.mismatch["tcp"] == 1, st
    finally:
        p.close()
        s.close()


def test_a_divergence_starts_the_armed_checkpoint(make_pair: MakePair) -> None:
    pair = make_pair(secondary_random=1.0)
    arm = Arm()
    pair.primary.set_arm(arm)
    with pair.lab.connect(PORT) as c:
        # Nothing diverged yet: the armed wait runs to its timer.
        assert arm.await_divergence(1, 0.3).why is ArmWhy.TIMER
        c.sendall(b"SET a 1\n")
        res = arm.await_divergence(2, 5.0)
        assert res.why is ArmWhy.DIVERGENCE
        # Still held: the next armed wait starts at once, until a checkpoint.
        assert arm.await_divergence(3, 5.0).why is ArmWhy.DIVERGENCE
        pair.primary.checkpoint_done(3, pair.primary.last_seq)
        c.settimeout(5.0)
        assert c.recv(100) == b"OK 00000000\n"
        assert arm.await_divergence(4, 0.3).why is ArmWhy.TIMER
    pair.primary.unprotect()
    with pytest.raises(Disarmed):
        arm.await_divergence(5, 1.0)
