"""The sim guest's key-value service: deterministic, state in guest pages
(so a checkpoint carries it), nondeterministic replies at the configured rate."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from netkit import Sender

from colo_plane.native import (
    BackendError,
    Bitmap,
    Direction,
    Domain,
    ErrorCode,
    EventKind,
    NativeError,
    StreamReader,
    StreamWriter,
)


@pytest.fixture
def pair_of_domains() -> Iterator[tuple[Domain, Domain]]:
    a = Domain.sim(pages=512, seed=1, service_pages=64)
    b = Domain.sim(pages=512, seed=2, service_pages=64)
    yield a, b
    a.close()
    b.close()


REQUESTS = [
    b"SET k1 v1",
    b"SET k2 hello there",
    b"GET k1",
    b"DEL k1",
    b"GET k1",
    b"COUNT",
    b"SET k2 x",
    b"GET k2",
]
REPLIES = [b"OK\n", b"OK\n", b"VALUE v1\n", b"DELETED\n", b"NOT_FOUND\n", b"COUNT 1\n", b"OK\n", b"VALUE x\n"]


def test_replies_are_deterministic(pair_of_domains: tuple[Domain, Domain]) -> None:
    for dom in pair_of_domains:
        dom.unpause()
        assert [dom.serve(i + 1, r) for i, r in enumerate(REQUESTS)] == REPLIES
        assert dom.service_seq() == len(REQUESTS)


def test_a_paused_guest_does_not_serve() -> None:
    with Domain.sim(pages=64, seed=1, service_pages=8) as dom:
        with pytest.raises(BackendError) as err:
            dom.serve(1, b"PING")
        assert err.value.code == ErrorCode.PAUSED
        dom.unpause()
        assert dom.serve(1, b"PING") == b"PONG\n"


@pytest.mark.parametrize(
    "request_line", [b"SET " + b"k" * 57 + b" v", b"SET k " + b"v" * 193, b"SET k \x00v", b"x" * 600]
)
def test_bad_requests_are_refused_and_change_nothing(request_line: bytes) -> None:
    with Domain.sim(pages=64, seed=1, service_pages=8) as dom:
        dom.unpause()
        dom.serve(1, b"SET k v")
        dom.pause()
        before = dom.hash()
        dom.unpause()
        with pytest.raises(NativeError) as err:
            dom.serve(2, request_line)
        assert err.value.code == ErrorCode.SERVICE
        dom.pause()
        assert dom.hash() == before
        assert dom.service_seq() == 1  # the refused request was not processed
        dom.unpause()
        assert dom.serve(3, b"GET k") == b"VALUE v\n"


def test_divergence_rate() -> None:
    with Domain.sim(pages=64, seed=9, service_pages=8, divergence=0.1) as dom:
        dom.unpause()
        replies = [dom.serve(i + 1, b"PING") for i in range(4000)]
    odd = sum(b" t=" in r for r in replies)
    assert 300 < odd < 500  # 10 % of 4000, with room for chance
    assert all(r == b"PONG\n" or r.startswith(b"PONG t=") for r in replies)


def test_store_full_is_an_error_reply() -> None:
    with Domain.sim(pages=8, seed=1, service_pages=2) as dom:  # one page of 16 slots
        dom.unpause()
        replies = [dom.serve(i + 1, f"SET key{i} v".encode()) for i in range(17)]
    assert replies[:16] == [b"OK\n"] * 16
    assert replies[16] == b"ERROR store full\n"


def test_a_checkpoint_carries_the_store(pair_of_domains: tuple[Domain, Domain]) -> None:
    """The service's state is guest memory: copying the dirty pages makes the
    secondary answer as the primary would."""
    primary, secondary = pair_of_domains
    primary.logdirty_enable()
    primary.unpause()
    for i, r in enumerate(REQUESTS):
        primary.serve(i + 1, r)
    primary.pause()
    dirty = primary.dirty_read_clear()
    assert 0 in dirty  # the header page
    tx, rx = socket.socketpair()
    with tx, rx:
        writer = StreamWriter(tx)

        def send() -> None:
            writer.header(primary)
            writer.pages(primary, Bitmap.full(primary.pages))
            writer.context(primary)
            writer.checkpoint(1, 1, last_seq=len(REQUESTS))

        sender = Sender(send)
        reader = StreamReader(rx, Direction.FORWARD, secondary)
        reader.header()
        event = reader.next()
        sender.join()
    assert event.kind == EventKind.CHECKPOINT
    assert event.last_seq == len(REQUESTS)
    secondary.unpause()
    assert secondary.service_seq() == len(REQUESTS)
    assert secondary.serve(100, b"GET k2") == b"VALUE x\n"
    assert secondary.serve(101, b"COUNT") == b"COUNT 1\n"
