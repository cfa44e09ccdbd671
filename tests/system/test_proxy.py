"""The COLO proxy between two real agents: replies compared, equal ones
released, diverged ones held until a checkpoint's SECONDARY_RESUMED."""

from __future__ import annotations

import socket
import time

import grpc
import pytest
from cluster import AgentProcess, RecordingCoordinator, StartAgent, checkpoint, protect, sim_spec

from colo_plane import addresses
from colo_plane._proto import colo_pb2
from colo_plane.rpc import duration

pytestmark = pytest.mark.system


class Client:
    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(addresses.parse(address), timeout=5)
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def reply(self, timeout: float = 5.0) -> bytes:
        """The next reply line; TimeoutError if none within timeout."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("proxy closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def call(self, line: str) -> bytes:
        self.send(line)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def test_equal_replies_are_released_and_both_guests_agree(agents: StartAgent) -> None:
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    boot = protect(a, b, sim_spec("vm1", pages=2048, rate=2000, divergence=0.0))
    client = Client(boot.service_address)
    try:
        for i in range(200):
            assert client.call(f"SET key{i} value{i}") == b"OK\n"
        assert client.call("GET key7") == b"VALUE value7\n"
        assert client.call("COUNT") == b"COUNT 200\n"
    finally:
        client.close()
    # Both guests processed every request in the same order: a checkpoint
    # now finds them equal in the service pages too (verify on).
    assert checkpoint(a, "vm1", 1, 2).verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH
    status = a.status("vm1")
    assert status.service_address == boot.service_address
    assert status.held_replies == 0


def test_diverged_reply_is_held_until_secondary_resumed(
    agents: StartAgent, recorder: tuple[RecordingCoordinator, str]
) -> None:
    """Every reply diverges (probability 1): the primary asks for a checkpoint
    and holds the reply; it leaves only after that checkpoint completes."""
    rec, _ = recorder
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    boot = protect(a, b, sim_spec("vm1", pages=2048, rate=0, divergence=1.0))
    client = Client(boot.service_address)
    try:
        client.send("SET k v")
        with pytest.raises(TimeoutError):
            client.reply(timeout=0.5)  # held
        deadline = time.monotonic() + 5
        while not rec.checkpoint_requests and time.monotonic() < deadline:
            time.sleep(0.02)
        (req,) = rec.checkpoint_requests
        assert req.domain == "vm1" and req.host_id == "host-a" and req.request_seq >= 1
        assert req.reason == colo_pb2.CHECKPOINT_REQUEST_REASON_OUTPUT_MISMATCH
        assert a.status("vm1").held_replies == 1
        done = checkpoint(a, "vm1", 1, 2)
        assert done.stats.last_seq >= req.request_seq
        reply = client.reply(timeout=2)
        assert reply.startswith(b"OK t=")  # the primary's own reply, released
        assert a.status("vm1").held_replies == 0
    finally:
        client.close()


def test_unprotected_primary_replies_at_once(agents: StartAgent) -> None:
    a, b = agents("host-a"), agents("host-b")
    boot = protect(a, b, sim_spec("vm1", pages=1024, rate=0, divergence=1.0, verify=False))
    a.stub.SetUnprotected(colo_pb2.SetUnprotectedRequest(domain="vm1", generation=2), timeout=5)
    client = Client(boot.service_address)
    try:
        assert client.call("SET k v").startswith(b"OK")
    finally:
        client.close()


def _arm(primary: AgentProcess, epoch: int, arm: float) -> grpc.Future:
    """An armed Agent.Checkpoint (docs/protocol.md) in flight, as the coordinator sends it."""
    req = colo_pb2.AgentCheckpointRequest(
        domain="vm1", generation=1, epoch=epoch, trigger=colo_pb2.CHECKPOINT_TRIGGER_TIMER, arm=duration(arm)
    )
    future: grpc.Future = primary.stub.Checkpoint.future(req, timeout=arm + 30)
    return future


def test_an_armed_checkpoint_starts_at_the_first_held_reply(
    agents: StartAgent, recorder: tuple[RecordingCoordinator, str]
) -> None:
    """No round trip: the held reply starts the armed epoch in C, and the
    reply leaves after that epoch's SECONDARY_RESUMED; nobody is asked."""
    rec, _ = recorder
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    boot = protect(a, b, sim_spec("vm1", pages=2048, rate=0, divergence=1.0))
    armed = _arm(a, epoch=2, arm=60.0)
    time.sleep(0.3)
    assert not armed.done()  # nothing held yet: it waits
    client = Client(boot.service_address)
    try:
        t0 = time.monotonic()
        client.send("SET k v")
        done = armed.result(timeout=10)
        assert client.reply(timeout=5).startswith(b"OK t=")  # released by epoch 2
        assert time.monotonic() - t0 < 2.0
    finally:
        client.close()
    assert done.trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST
    assert done.reason == colo_pb2.CHECKPOINT_REQUEST_REASON_OUTPUT_MISMATCH
    assert done.request_seq > boot.stats.last_seq and done.stats.last_seq >= done.request_seq
    assert done.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH
    assert not rec.checkpoint_requests  # armed: the agent asked nobody
    assert a.status("vm1").epoch == 2


def test_an_armed_checkpoint_runs_at_its_time_or_when_fired(agents: StartAgent) -> None:
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    protect(a, b, sim_spec("vm1", pages=1024, rate=500, divergence=0.0))
    t0 = time.monotonic()
    timer = _arm(a, epoch=2, arm=0.3).result(timeout=10)
    assert timer.trigger == colo_pb2.CHECKPOINT_TRIGGER_TIMER and time.monotonic() - t0 >= 0.3
    # A second call for the armed epoch starts it now; both get the same answer.
    armed = _arm(a, epoch=3, arm=60.0)
    time.sleep(0.2)
    fired = checkpoint(a, "vm1", 1, 3)
    first = armed.result(timeout=10)
    assert fired.trigger == first.trigger == colo_pb2.CHECKPOINT_TRIGGER_MANUAL
    assert fired.epoch == first.epoch == 3 and fired.stats == first.stats
    assert first.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH


def test_unprotecting_ends_an_armed_checkpoint_that_never_started(agents: StartAgent) -> None:
    a, b = agents("host-a"), agents("host-b")
    protect(a, b, sim_spec("vm1", pages=1024, rate=0, divergence=0.0, verify=False))
    armed = _arm(a, epoch=2, arm=60.0)
    time.sleep(0.2)
    t0 = time.monotonic()
    a.stub.SetUnprotected(colo_pb2.SetUnprotectedRequest(domain="vm1", generation=2), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        armed.result(timeout=10)
    assert time.monotonic() - t0 < 2.0  # not the arm's 60 s
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert "never started" in (err.value.details() or "")
    assert a.status("vm1").epoch == 1  # nothing ran
