"""The armed checkpoint (native/arm.c) over real sockets: the sim proxy
reports its held replies into the arm, and the checkpoint side waits on it
(colo_arm_await / fire / disarm).  Any output comparer reports the same
way: the last tests report into an arm with no proxy at all."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from proxykit import attach, client, frame, read_frames, read_line

from colo_plane.native import (
    Arm,
    ArmResult,
    ArmWhy,
    Disarmed,
    Domain,
    ErrorCode,
    InvalidArgument,
    NativeError,
    Proxy,
)
from colo_plane.native._ffi import ffi, lib


@pytest.fixture
def dom() -> Iterator[Domain]:
    d = Domain.sim(pages=256, seed=3, service_pages=32)
    d.unpause()
    yield d
    d.close()


@pytest.fixture
def armed(dom: Domain) -> Iterator[tuple[Arm, Proxy, tuple[str, int]]]:
    """An arm and the proxy that reports into it."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    arm = Arm()
    p = Proxy(dom, listener, reply_timeout=0.3, arm=arm)
    yield arm, p, address
    p.close()


def _await_in_thread(arm: Arm, token: int, timeout: float) -> tuple[threading.Thread, list[object]]:
    """Runs await_divergence on a thread (as the agent does); out gets its result or exception."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(arm.await_divergence(token, timeout))
        except NativeError as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_an_armed_wait_ends_the_moment_a_reply_is_held(armed: tuple[Arm, Proxy, tuple[str, int]]) -> None:
    arm, p, address = armed
    link = attach(p)
    thread, out = _await_in_thread(arm, token=7, timeout=10.0)
    time.sleep(0.05)
    assert thread.is_alive()  # nothing held: it waits
    c = client(address)
    c.sendall(b"SET k v\n")
    read_frames(link, 1)
    t0 = time.monotonic()
    link.sendall(frame(1, b"OK t=99\n"))  # differs: held
    thread.join(timeout=5)
    assert time.monotonic() - t0 < 1.0
    (result,) = out
    assert isinstance(result, ArmResult)
    assert (result.why, result.seq, result.reason) == (ArmWhy.DIVERGENCE, 1, "mismatch")
    # Still held: a new wait starts at once (the checkpoint that covers it has not come).
    assert arm.await_divergence(8, 5.0).why is ArmWhy.DIVERGENCE
    p.checkpoint_done(8, 1)
    assert read_line(c) == b"OK\n"
    assert arm.await_divergence(9, 0.05).why is ArmWhy.TIMER  # nothing held any more


def test_an_armed_wait_times_out_as_a_timer_checkpoint(armed: tuple[Arm, Proxy, tuple[str, int]]) -> None:
    arm, p, _ = armed
    link = attach(p)
    t0 = time.monotonic()
    result = arm.await_divergence(1, 0.2)
    assert result.why is ArmWhy.TIMER
    assert 0.15 < time.monotonic() - t0 < 2.0
    link.close()


def test_fire_starts_only_the_armed_epoch_it_names(armed: tuple[Arm, Proxy, tuple[str, int]]) -> None:
    arm, p, _ = armed
    link = attach(p)
    arm.fire(4)  # a late fire of an epoch that is over
    assert arm.await_divergence(5, 0.1).why is ArmWhy.TIMER  # does not touch the next one
    thread, out = _await_in_thread(arm, token=6, timeout=10.0)
    time.sleep(0.05)
    arm.fire(6)
    thread.join(timeout=5)
    assert [r.why for r in out if isinstance(r, ArmResult)] == [ArmWhy.FIRED]
    link.close()


@pytest.mark.parametrize("how", ["disarm", "detach", "unprotect", "link lost", "close"])
def test_an_armed_wait_ends_without_a_checkpoint(armed: tuple[Arm, Proxy, tuple[str, int]], how: str) -> None:
    arm, p, _ = armed
    link = attach(p)
    arm.disarm(2)  # a late disarm of another epoch: no effect
    thread, out = _await_in_thread(arm, token=3, timeout=10.0)
    time.sleep(0.05)
    assert thread.is_alive()
    if how == "disarm":
        arm.disarm(3)
    elif how == "detach":
        p.detach()
    elif how == "unprotect":
        p.unprotect()
    elif how == "close":
        p.close()
    else:
        link.close()
    thread.join(timeout=5)
    (result,) = out
    assert isinstance(result, Disarmed), result
    assert result.code == ErrorCode.DISARMED
    assert "armed checkpoint 3" in str(result)


def test_an_armed_wait_needs_a_link_and_a_token(armed: tuple[Arm, Proxy, tuple[str, int]]) -> None:
    arm, p, _ = armed
    with pytest.raises(Disarmed, match="runs unprotected"):
        arm.await_divergence(1, 1.0)  # never attached: nothing to wait for
    link = attach(p)
    with pytest.raises(InvalidArgument, match="token 0"):
        arm.await_divergence(0, 1.0)
    link.close()


def test_a_closed_proxy_leaves_its_arm_with_nothing_held(armed: tuple[Arm, Proxy, tuple[str, int]]) -> None:
    """The held replies leave with the proxy: a new comparer starts from none."""
    arm, p, address = armed
    link = attach(p)
    c = client(address)
    c.sendall(b"SET k v\n")
    read_frames(link, 1)
    link.sendall(frame(1, b"OK t=99\n"))  # held
    assert arm.await_divergence(1, 5.0).why is ArmWhy.DIVERGENCE
    p.close()
    with pytest.raises(Disarmed, match="the proxy is closing"):
        arm.await_divergence(2, 1.0)
    lib.colo_arm_comparing(arm._p(), b"")  # some other comparer compares now
    assert arm.await_divergence(3, 0.05).why is ArmWhy.TIMER


# ---- any comparer: the report functions alone (colo.h) ---------------------------


def test_an_arm_no_comparer_reports_to_refuses_to_wait() -> None:
    with pytest.raises(Disarmed, match="no output comparer reports to it"):
        Arm().await_divergence(1, 1.0)


def test_a_divergence_any_comparer_reports_starts_the_armed_checkpoint() -> None:
    """What a second comparer (a NIC-level proxy) calls: comparing, diverged,
    released; the arm knows nothing of the sim proxy."""
    arm = Arm()
    lib.colo_arm_comparing(arm._p(), ffi.NULL)
    thread, out = _await_in_thread(arm, token=5, timeout=10.0)
    time.sleep(0.05)
    assert thread.is_alive()
    lib.colo_arm_diverged(arm._p(), 41, lib.COLO_PX_TIMEOUT)
    thread.join(timeout=5)
    (result,) = out
    assert isinstance(result, ArmResult)
    assert (result.why, result.seq, result.reason) == (ArmWhy.DIVERGENCE, 41, "timeout")
    lib.colo_arm_diverged(arm._p(), 42, lib.COLO_PX_MISMATCH)
    lib.colo_arm_released(arm._p(), 1)
    assert arm.await_divergence(6, 0.05).why is ArmWhy.DIVERGENCE  # one still held
    lib.colo_arm_released(arm._p(), 5)  # more than held: none, not a wrap
    assert arm.await_divergence(7, 0.05).why is ArmWhy.TIMER
    lib.colo_arm_comparing(arm._p(), b"the NIC link is down")
    with pytest.raises(Disarmed, match="the NIC link is down"):
        arm.await_divergence(8, 1.0)
