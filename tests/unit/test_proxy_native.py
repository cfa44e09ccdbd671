"""The proxy's native data path (native/proxy.c, native/mirror.c) over real
TCP sockets: a test plays the client and the other end of the link."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from proxykit import FRAME, attach, client, frame, read_frames, read_line

from colo_plane.native import (
    BackendError,
    Domain,
    ErrorCode,
    Mirror,
    Proxy,
    ProxyEvent,
    ProxyEventKind,
)


def nothing_arrives(sock: socket.socket, within: float = 0.2) -> bool:
    return not select.select([sock], [], [], within)[0]


def wait_events(proxy: Proxy, count: int, timeout: float = 5.0) -> list[ProxyEvent]:
    got: list[ProxyEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        select.select([proxy.event_fd], [], [], 0.05)
        got += proxy.events()
    return got


@pytest.fixture
def dom() -> Iterator[Domain]:
    d = Domain.sim(pages=256, seed=3, service_pages=32)
    d.unpause()
    yield d
    d.close()


@pytest.fixture
def proxy(dom: Domain) -> Iterator[tuple[Proxy, tuple[str, int]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    p = Proxy(dom, listener, reply_timeout=0.3)
    yield p, address
    p.close()


def test_unprotected_replies_go_straight_out_and_seqs_follow_the_guest(
    dom: Domain, proxy: tuple[Proxy, tuple[str, int]]
) -> None:
    p, address = proxy
    c = client(address)
    c.sendall(b"SET a 1\nGET a\r\nCOUNT\n")
    assert [read_line(c) for _ in range(3)] == [b"OK\n", b"VALUE 1\n", b"COUNT 1\n"]
    assert dom.service_seq() == 3
    st = p.stats()
    assert (st.requests, st.last_seq, st.held) == (3, 3, 0)


def test_equal_replies_are_released_when_the_secondary_agrees(proxy: tuple[Proxy, tuple[str, int]]) -> None:
    p, address = proxy
    link = attach(p)
    c = client(address)
    c.sendall(b"SET k v\n")
    assert read_frames(link, 1) == [(1, b"SET k v")]
    assert nothing_arrives(c)  # waits for the secondary's reply
    link.sendall(frame(1, b"OK\n"))
    assert read_line(c) == b"OK\n"


def test_a_different_reply_is_held_until_a_checkpoint_covers_it(
    proxy: tuple[Proxy, tuple[str, int]],
) -> None:
    p, address = proxy
    link = attach(p)
    c = client(address)
    c.sendall(b"SET k v\nGET k\n")
    assert [s for s, _ in read_frames(link, 2)] == [1, 2]
    link.sendall(frame(1, b"OK t=1234\n") + frame(2, b"VALUE v\n"))
    (hold,) = wait_events(p, 1)
    assert (hold.kind, hold.seq, hold.reason) == (ProxyEventKind.HOLD, 1, "mismatch")
    assert nothing_arrives(c)  # request 2 agreed but leaves after request 1 on this connection
    assert p.stats().held == 1
    p.checkpoint_done(epoch=7, last_seq=0)  # a checkpoint from before the request releases nothing
    assert nothing_arrives(c)
    p.checkpoint_done(epoch=8, last_seq=1)
    assert [read_line(c), read_line(c)] == [b"OK\n", b"VALUE v\n"]
    (release,) = wait_events(p, 1)
    assert (release.kind, release.seq, release.epoch) == (ProxyEventKind.RELEASE, 1, 8)
    assert release.t_ns > hold.t_ns
    assert p.stats().held == 0


def test_a_missing_reply_times_out_into_a_hold(proxy: tuple[Proxy, tuple[str, int]]) -> None:
    p, address = proxy
    link = attach(p)
    c = client(address)
    c.sendall(b"PING\n")
    read_frames(link, 1)
    (hold,) = wait_events(p, 1, timeout=3.0)
    assert (hold.kind, hold.seq, hold.reason) == (ProxyEventKind.HOLD, 1, "timeout")
    assert p.stats().timeouts == 1
    released = p.unprotect()
    assert released == 1
    assert read_line(c) == b"PONG\n"


def test_a_line_past_the_limit_is_refused_and_changes_nothing(
    dom: Domain, proxy: tuple[Proxy, tuple[str, int]]
) -> None:
    p, address = proxy
    c = client(address)
    c.sendall(b"SET big " + b"x" * 600 + b"\n")
    assert read_line(c).startswith(b"ERROR request line longer than 512 bytes")
    assert c.recv(10) == b""  # and the connection is closed
    assert dom.service_seq() == 0
    assert p.stats().clients_refused == 1
    c2 = client(address)  # others are served on
    c2.sendall(b"PING\n")
    assert read_line(c2) == b"PONG\n"


def test_a_bad_request_gets_an_error_reply(proxy: tuple[Proxy, tuple[str, int]]) -> None:
    _, address = proxy
    c = client(address)
    c.sendall(b"SET k \x01\n")
    assert read_line(c).startswith(b"ERROR request holds a non-printable byte")


def test_a_half_closed_client_still_gets_its_replies(proxy: tuple[Proxy, tuple[str, int]]) -> None:
    _, address = proxy
    c = client(address)
    c.sendall(b"SET h 1\nGET h\n")
    c.shutdown(socket.SHUT_WR)
    assert [read_line(c), read_line(c)] == [b"OK\n", b"VALUE 1\n"]
    assert c.recv(10) == b""


def test_a_malformed_link_frame_drops_the_link_and_holds_output(
    proxy: tuple[Proxy, tuple[str, int]],
) -> None:
    p, address = proxy
    link = attach(p)
    c = client(address)
    c.sendall(b"PING\n")
    read_frames(link, 1)
    link.sendall(FRAME.pack(1, 1 << 20))
    (lost,) = wait_events(p, 1)
    assert lost.kind is ProxyEventKind.LINK_LOST
    assert lost.code == ErrorCode.RECORD_TOO_LONG
    assert "proxy frame of 1048576 bytes" in lost.detail
    assert link.recv(10) == b""  # the proxy closed it
    assert nothing_arrives(c, 0.5)  # never released by a stranger's bytes
    assert p.unprotect() == 1
    assert read_line(c) == b"PONG\n"


def test_requests_wait_while_the_guest_is_paused(dom: Domain, proxy: tuple[Proxy, tuple[str, int]]) -> None:
    _, address = proxy
    dom.pause()
    c = client(address)
    c.sendall(b"SET p 1\n")
    assert nothing_arrives(c, 0.3)
    assert dom.service_seq() == 0
    dom.unpause()
    assert read_line(c) == b"OK\n"


def test_mirror_runs_requests_in_order_and_skips_what_a_checkpoint_carried(dom: Domain) -> None:
    ours, theirs = socket.socketpair()
    m = Mirror(dom, theirs)
    try:
        ours.sendall(frame(1, b"SET a 1") + frame(2, b"GET a"))
        assert read_frames(ours, 2) == [(1, b"OK\n"), (2, b"VALUE 1\n")]
        ours.sendall(frame(2, b"SET a 2") + frame(3, b"GET a"))  # 2 is already in the guest
        assert read_frames(ours, 1) == [(3, b"VALUE 1\n")]
        ours.sendall(FRAME.pack(4, 1 << 20))
        select.select([m.done_fd], [], [], 5)
        result = m.result()
        assert result.finished
        assert result.code == ErrorCode.RECORD_TOO_LONG
        assert (result.served, result.skipped) == (3, 1)
    finally:
        m.close()
        ours.close()


def test_mirror_stops_on_close_while_the_guest_is_paused(dom: Domain) -> None:
    ours, theirs = socket.socketpair()
    m = Mirror(dom, theirs)
    dom.pause()
    ours.sendall(frame(1, b"PING"))
    time.sleep(0.1)
    started = time.monotonic()
    m.close()
    assert time.monotonic() - started < 1.0
    assert ours.recv(10) == b""
    ours.close()


NO_HOOK = "backend sim has no guest network hook, needed by the {}: this sim domain runs no guest service"


@pytest.mark.parametrize("service_pages", [0, 1])
def test_a_domain_without_the_guest_hooks_is_refused_a_proxy_and_a_mirror(service_pages: int) -> None:
    """A sim domain with too few service pages runs no service: its backend has
    no guest network hook, so a proxy or mirror on it is refused with a clear
    error (not served with an ERROR reply a request), and the sockets stay the
    caller's."""
    with Domain.sim(pages=64, seed=1, service_pages=service_pages) as d:
        d.unpause()
        listener = socket.create_server(("127.0.0.1", 0))
        with pytest.raises(BackendError) as err:
            Proxy(d, listener, reply_timeout=0.3)
        assert err.value.code == ErrorCode.UNSUPPORTED
        assert NO_HOOK.format("proxy") in str(err.value)
        c = socket.create_connection(listener.getsockname(), timeout=5)  # the listener is still open
        c.close()
        listener.close()
        ours, theirs = socket.socketpair()
        with pytest.raises(BackendError) as err:
            Mirror(d, theirs)
        assert err.value.code == ErrorCode.UNSUPPORTED
        assert NO_HOOK.format("mirror") in str(err.value)
        ours.sendall(b"x")
        assert theirs.recv(1) == b"x"  # the link is still open, and the caller's
        ours.close()
        theirs.close()
        for call in (lambda: d.serve(1, b"PING"), d.service_seq):
            with pytest.raises(BackendError) as err:
                call()
            assert err.value.code == ErrorCode.UNSUPPORTED
            assert "backend sim has no guest network hook" in str(err.value)


def test_past_the_ring_the_proxy_stops_reading_until_replies_leave(
    proxy: tuple[Proxy, tuple[str, int]],
) -> None:
    p, address = proxy
    link = attach(p)
    c = client(address)
    c.sendall(b"PING\n" * 5000)
    assert len(read_frames(link, 4096)) == 4096
    assert nothing_arrives(link, 0.3)  # 4096 outstanding: the rest wait unread
    assert p.stats().last_seq == 4096
    p.unprotect()
    replies = b""
    c.settimeout(5)
    while replies.count(b"\n") < 5000:
        replies += c.recv(65536)
    assert replies == b"PONG\n" * 5000
    assert p.stats().last_seq == 5000


def test_a_request_both_guests_refuse_is_answered_alike_and_released(
    proxy: tuple[Proxy, tuple[str, int]],
) -> None:
    p, address = proxy
    secondary = Domain.sim(pages=256, seed=4, service_pages=32)
    secondary.unpause()
    ours, theirs = socket.socketpair()
    mirror = Mirror(secondary, theirs)
    try:
        p.attach(ours)
        c = client(address)
        c.sendall(b"SET k \x01\n" + b"X" * 100 + b" " + b"y" * 300 + b"\n")
        assert read_line(c).startswith(b"ERROR request holds a non-printable byte")
        assert read_line(c).startswith(b"ERROR key of at most")
        assert p.stats().mismatches == 0  # the same error text on both ends: no checkpoint for it
    finally:
        p.detach()
        mirror.close()
        secondary.close()


def test_polling_threads_serve_like_sleeping_ones(dom: Domain) -> None:
    """--poll-us: the same answers, with the threads polling between requests."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    p = Proxy(dom, listener, reply_timeout=0.3, poll_us=200)
    secondary = Domain.sim(pages=256, seed=3, service_pages=32)
    secondary.unpause()
    ours, theirs = socket.socketpair()
    mirror = Mirror(secondary, theirs, poll_us=200)
    try:
        p.attach(ours)
        c = client(address)
        for i in range(50):
            c.sendall(f"SET k{i} {i}\n".encode())
            assert read_line(c) == b"OK\n"
        assert secondary.service_seq() == 50 and p.stats().held == 0
    finally:
        p.close()
        mirror.close()
        secondary.close()
    with pytest.raises(ValueError, match="poll window"):
        Proxy(dom, socket.create_server(("127.0.0.1", 0)), reply_timeout=0.3, poll_us=-1)


# ---- backpressure: a client's unsent output is bounded ------------------------------

BOUND = 16384  # a small output_max, so the bound shows at once
VALUES = [f"{j:03d}" + "x" * 187 for j in range(50)]
REPLY = len("VALUE \n") + 190  # bytes of a reply to GET b<j>


def _slow_client(address: tuple[str, int]) -> socket.socket:
    """A client with a small receive buffer: the kernel takes little of what it does not read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(address)
    return s


def _sender(sock: socket.socket, data: bytes) -> threading.Thread:
    """sendall in a thread: a paused client's sends block once the kernel's buffers are full."""
    t = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    t.start()
    return t


def _read_lines(sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"\n") < count:
        chunk = sock.recv(65536)
        assert chunk, "closed"
        buf += chunk
    return buf.split(b"\n")[:count]


def _until_paused(p: Proxy, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while p.stats().clients_paused != 1:
        assert time.monotonic() < deadline, f"no client paused: {p.stats()}"
        time.sleep(0.01)


@pytest.fixture
def bounded(dom: Domain) -> Iterator[tuple[Proxy, tuple[str, int]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the accepted clients' too
    address = listener.getsockname()
    p = Proxy(dom, listener, reply_timeout=0.3, output_max=BOUND)
    c = client(address)
    c.sendall(b"".join(f"SET b{j} {v}\n".encode() for j, v in enumerate(VALUES)))
    assert _read_lines(c, len(VALUES)) == [b"OK"] * len(VALUES)
    c.close()
    yield p, address
    p.close()


def test_a_client_that_does_not_read_is_paused_alone_and_loses_nothing(
    bounded: tuple[Proxy, tuple[str, int]],
) -> None:
    p, address = bounded
    n = 20_000  # about 4 MB of replies, 250 times the bound
    slow = _slow_client(address)
    sending = _sender(slow, b"".join(f"GET b{i % 50}\n".encode() for i in range(n)))
    _until_paused(p)
    served = p.stats().requests
    time.sleep(0.3)
    st = p.stats()
    assert st.requests == served  # read no further, nor served
    # The bound, plus what the kernel's small buffers took: not the 20,000 sent.
    assert served - len(VALUES) < 1000, served
    assert st.output_bytes <= BOUND + 512
    assert st.backpressure >= 1  # (more when the kernel took some and it went on for a while)
    other = client(address)  # everyone else is served on
    other.sendall(b"PING\nGET b7\n")
    assert _read_lines(other, 2, timeout=2) == [b"PONG", f"VALUE {VALUES[7]}".encode()]
    # The slow client reads: it goes on, and gets every reply, in order.
    assert _read_lines(slow, n) == [f"VALUE {VALUES[i % 50]}".encode() for i in range(n)]
    sending.join(5)
    st = p.stats()
    assert (st.clients_paused, st.output_bytes) == (0, 0)
    assert st.requests == len(VALUES) + 2 + n
    assert st.backpressure >= 1


def test_replies_held_for_the_secondary_count_toward_the_bound(
    bounded: tuple[Proxy, tuple[str, int]],
) -> None:
    """Held replies are never dropped: the client is read no further instead."""
    p, address = bounded
    link = attach(p)  # a secondary that never answers: every reply waits
    c = client(address)
    n = 2000
    sending = _sender(c, b"".join(f"GET b{i % 50}\n".encode() for i in range(n)))
    _until_paused(p)
    forwarded = p.stats().last_seq - len(VALUES)
    assert forwarded == -(-BOUND // REPLY)  # served until the held replies reached the bound
    assert nothing_arrives(c)  # all held
    assert len(read_frames(link, forwarded)) == forwarded
    assert nothing_arrives(link, 0.3)
    p.unprotect()  # held ones leave, and the rest go straight out
    assert _read_lines(c, n) == [f"VALUE {VALUES[i % 50]}".encode() for i in range(n)]
    sending.join(5)
    assert p.stats().clients_paused == 0


def test_the_bound_is_checked(dom: Domain) -> None:
    with pytest.raises(ValueError, match="output bound"):
        Proxy(dom, socket.create_server(("127.0.0.1", 0)), reply_timeout=0.3, output_max=100)


def test_mirror_stops_reading_while_the_primary_does_not_take_its_replies(dom: Domain) -> None:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    m = Mirror(dom, theirs)
    try:
        setup = b"".join(frame(1 + j, f"SET b{j} {v}".encode()) for j, v in enumerate(VALUES))
        ours.sendall(setup)
        assert len(read_frames(ours, len(VALUES))) == len(VALUES)
        n = 20_000  # about 4 MB of replies: four times the mirror's bound
        first = len(VALUES) + 1
        sending = _sender(ours, b"".join(frame(first + i, f"GET b{i % 50}".encode()) for i in range(n)))
        time.sleep(0.5)
        served = m.result().served
        time.sleep(0.3)
        assert m.result().served == served < len(VALUES) + n // 2  # waits for the primary
        got = read_frames(ours, n, timeout=10)
        assert got == [(first + i, f"VALUE {VALUES[i % 50]}\n".encode()) for i in range(n)]
        sending.join(5)
        assert m.result().served == len(VALUES) + n
    finally:
        m.close()
        ours.close()
