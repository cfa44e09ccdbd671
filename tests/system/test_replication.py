"""Two real `colo agent` processes run the seed protocol over loopback,
reporting to a recording coordinator (a real gRPC server)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import defaultdict

import grpc
import pytest
from cluster import AgentProcess, RecordingCoordinator, StartAgent, checkpoint, protect, sim_spec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from colo_plane import promtext
from colo_plane._proto import colo_pb2
from colo_plane.agent import handshake

pytestmark = pytest.mark.system

FIRST_BOOT = [colo_pb2.CONTROL_ID_SECONDARY_READY, colo_pb2.CONTROL_ID_SECONDARY_RESUMED]
CHECKPOINT = [
    colo_pb2.CONTROL_ID_CHECKPOINT_REQUEST,
    colo_pb2.CONTROL_ID_SECONDARY_SUSPENDED,
    colo_pb2.CONTROL_ID_SECONDARY_RESUMED,
]


def metric(agent: AgentProcess, name: str, **labels: str) -> float:
    """The sum of a metric's samples on the agent's /metrics that carry labels (0 when absent)."""
    return promtext.total([promtext.scrape(agent.info["metrics"], timeout=5)], name, **labels)


def by_epoch(
    points: list[colo_pb2.ReportSyncPointRequest],
) -> dict[int, list[colo_pb2.ReportSyncPointRequest]]:
    out: dict[int, list[colo_pb2.ReportSyncPointRequest]] = defaultdict(list)
    for p in points:
        out[p.epoch].append(p)
    return out


def test_first_boot_then_200_checkpoints_all_verify(
    agents: StartAgent, recorder: tuple[RecordingCoordinator, str]
) -> None:
    """Every checkpoint makes the secondary equal the primary (verify on),
    and the sync points per epoch are exactly 2,3 (first boot) then 0,1,3."""
    rec, _ = recorder
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    boot = protect(a, b, sim_spec("vm1", pages=4096, rate=20_000), generation=3, epoch=1)
    assert boot.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH
    assert boot.stats.pages == 4096
    a_sizes, b_sizes = [], []
    for epoch in range(2, 202):
        reply = checkpoint(a, "vm1", 3, epoch)
        assert reply.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH, (epoch, reply.verify)
        s = reply.stats
        assert s.dirty_d_pages == s.pages >= max(s.dirty_a_pages, s.dirty_b_pages)
        a_sizes.append(s.dirty_a_pages)
        b_sizes.append(s.dirty_b_pages)
    # Both guests ran and dirtied pages of their own: D was a real union.
    assert sum(a_sizes) > 0 and sum(b_sizes) > 0
    points = rec.wait_for("vm1", 2 + 200 * 3)
    assert len(points) == 2 + 200 * 3
    assert rec.unary_reports == 0  # the agents report on ReportSyncPoints streams
    epochs = by_epoch(points)
    assert sorted(epochs) == list(range(1, 202))
    for epoch, pts in epochs.items():
        # One host's CLOCK_MONOTONIC orders them: both agents run on this machine.
        ordered = [p.control_id for p in sorted(pts, key=lambda p: p.monotonic_ns)]
        assert ordered == (FIRST_BOOT if epoch == 1 else CHECKPOINT), (epoch, ordered)
        assert all(p.generation == 3 for p in pts)
        roles = {p.control_id: p.host_id for p in pts}
        if epoch > 1:
            assert roles[colo_pb2.CONTROL_ID_CHECKPOINT_REQUEST] == "host-a"
            assert roles[colo_pb2.CONTROL_ID_SECONDARY_RESUMED] == "host-b"
    status = b.status("vm1")
    assert status.epoch == 201 and status.checkpoints == 200 and not status.paused
    assert metric(a, "colo_verify_checks_total") >= 200
    assert metric(a, "colo_verify_failures_total") == 0
    assert metric(a, "colo_checkpoint_pause_seconds_count", role="primary") == 200
    assert metric(a, "grpc_server_handled_total", grpc_method="Checkpoint", grpc_code="OK") == 200


def test_sending_only_a_is_caught_by_verify(agents: StartAgent) -> None:
    """The back channel matters: a primary that sends A instead of A | B
    leaves the secondary wrong, and verify names the pages."""
    a, b = agents("host-a", "--verify", "--test-send-only-a"), agents("host-b", "--verify")
    protect(a, b, sim_spec("vm1", pages=2048, rate=20_000), generation=1)
    outcomes = []
    for epoch in range(2, 8):
        time.sleep(0.02)  # let both guests dirty pages
        reply = checkpoint(a, "vm1", 1, epoch)
        outcomes.append(reply.verify)
        if reply.verify.outcome == colo_pb2.VERIFY_OUTCOME_MISMATCH:
            break
    bad = outcomes[-1]
    assert bad.outcome == colo_pb2.VERIFY_OUTCOME_MISMATCH, "verify never failed with only A sent"
    assert bad.mismatched_pages > 0 and bad.mismatched_pfns
    assert list(bad.mismatched_pfns) == sorted(bad.mismatched_pfns)
    assert metric(a, "colo_verify_failures_total") >= 1
    assert "VERIFY FAILED" in a.log()


def test_torn_checkpoint_is_discarded_whole(
    agents: StartAgent, recorder: tuple[RecordingCoordinator, str]
) -> None:
    """The data connection is cut inside PAGE_DATA: the secondary drops the
    staged state; its memory and context are what they were at suspend."""
    rec, _ = recorder
    a = agents("host-a", "--verify", "--test-cut-checkpoint-after", "300000")
    b = agents("host-b", "--verify")
    protect(a, b, sim_spec("vm1", pages=4096, rate=50_000), generation=1)
    time.sleep(0.1)  # D holds well over 73 pages: the cut lands inside PAGE_DATA
    with pytest.raises(grpc.RpcError) as err:
        checkpoint(a, "vm1", 1, 2)
    assert err.value.code() == grpc.StatusCode.ABORTED
    suspended = [
        p
        for p in rec.wait_for("vm1", 4)
        if p.control_id == colo_pb2.CONTROL_ID_SECONDARY_SUSPENDED and p.epoch == 2
    ]
    assert len(suspended) == 1 and suspended[0].verify.memory_hash
    deadline = time.monotonic() + 10
    while not b.status("vm1").last_error and time.monotonic() < deadline:
        time.sleep(0.05)
    after = b.status("vm1", include_hash=True)
    assert after.paused and after.epoch == 1, after
    assert after.memory_hash == suspended[0].verify.memory_hash
    assert after.context_hash == suspended[0].verify.context_hash
    assert "truncated" in after.last_error or "closed" in after.last_error
    assert not any(
        p.control_id == colo_pb2.CONTROL_ID_SECONDARY_RESUMED and p.epoch == 2 for p in rec.points("vm1")
    )


def _stranger(address: str, payload: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        s.settimeout(5)
        chunks = []
        while True:
            try:
                chunk = s.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


async def _wrong_secret(address: str, domain: str, generation: int) -> str:
    """The primary's handshake with a wrong secret: it sees the secondary's
    proof fail, and says so."""
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    try:
        await handshake.client(sock, domain, generation, b"w" * 32, timeout=5)
    except handshake.HandshakeError as exc:
        return exc.reason
    finally:
        sock.close()
    return "accepted"


def _forged_proof(address: str, domain: str, generation: int) -> bytes:
    """A stranger who ignores the challenge and sends a made-up proof."""
    name = domain.encode()
    head = handshake.HELLO_HEAD.pack(handshake.MAGIC, 1, handshake.DATA, len(name))
    hello = head + name + generation.to_bytes(8, "big")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(hello + bytes(32))
        challenge = s.recv(72, socket.MSG_WAITALL)
        assert challenge.startswith(handshake.MAGIC)
        s.sendall(b"\x01" * 32)  # not the HMAC
        return s.recv(64)


def test_strangers_on_the_data_port_are_refused(agents: StartAgent) -> None:
    """A wrong secret, garbage, or an unknown pair: refused, logged, counted,
    and the guest is untouched; the real pair goes on working."""
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    protect(a, b, sim_spec("vm1", pages=1024, rate=0), generation=2)
    before = b.status("vm1", include_hash=True)
    # A wrong secret for a pair that exists (the secondary expects no second
    # primary: it answers nothing useful and closes).
    b.stub.PrepareSecondary(
        colo_pb2.PrepareSecondaryRequest(
            domain="vm2",
            generation=1,
            epoch=1,
            spec=sim_spec("vm2", pages=64, rate=0),
            pair_secret=b"r" * 32,
            peer_host_id="host-a",
            peer_data_address=a.data,
        ),
        timeout=10,
    )
    assert asyncio.run(_wrong_secret(b.data, "vm2", 1)) == "bad_proof"  # the primary side's check
    assert _forged_proof(b.data, "vm2", 1) == b""  # the secondary's check: closed, no ACCEPT
    assert _stranger(b.data, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    unknown = handshake.HELLO_HEAD.pack(handshake.MAGIC, 1, handshake.DATA, 3) + b"vm9" + bytes(40)
    assert _stranger(b.data, unknown) == b""
    assert metric(b, "colo_data_handshake_failures_total", reason="bad_proof") == 1
    assert metric(b, "colo_data_handshake_failures_total", reason="closed") == 1
    assert metric(b, "colo_data_handshake_failures_total", reason="garbage") == 1
    assert metric(b, "colo_data_handshake_failures_total", reason="unknown_pair") == 1
    log = b.log()
    assert "refused data connection" in log and "does not know the pair secret" in log
    after = b.status("vm1", include_hash=True)
    assert (after.memory_hash, after.context_hash, after.epoch) == (
        before.memory_hash,
        before.context_hash,
        before.epoch,
    )
    assert checkpoint(a, "vm1", 2, 2).verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH


def test_stale_generation_is_refused_and_changes_nothing(
    agents: StartAgent, recorder: tuple[RecordingCoordinator, str]
) -> None:
    rec, _ = recorder
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    protect(a, b, sim_spec("vm1", pages=1024, rate=0), generation=5)
    checkpoint(a, "vm1", 5, 2)
    points = len(rec.wait_for("vm1", 5))
    before_a, before_b = a.status("vm1", include_hash=True), b.status("vm1", include_hash=True)
    with pytest.raises(grpc.RpcError) as err:
        checkpoint(a, "vm1", 4, 3)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "generation 4, older than the generation 5" in (err.value.details() or "")
    time.sleep(0.2)
    assert len(rec.points("vm1")) == points
    after_a, after_b = a.status("vm1", include_hash=True), b.status("vm1", include_hash=True)
    for before, after in ((before_a, after_a), (before_b, after_b)):
        assert (after.memory_hash, after.context_hash, after.epoch, after.checkpoints, after.paused) == (
            before.memory_hash,
            before.context_hash,
            before.epoch,
            before.checkpoints,
            before.paused,
        )
    assert metric(a, "colo_fenced_total", what="command") == 1
    assert (
        metric(a, "grpc_server_handled_total", grpc_method="Checkpoint", grpc_code="FAILED_PRECONDITION") == 1
    )
    assert checkpoint(a, "vm1", 5, 3).verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH


def test_bad_arguments_get_clear_errors(agents: StartAgent) -> None:
    a = agents("host-a")
    cases = [
        (
            lambda: a.stub.Checkpoint(
                colo_pb2.AgentCheckpointRequest(domain="nope", generation=1, epoch=2), timeout=5
            ),
            grpc.StatusCode.NOT_FOUND,
            "holds no domain",
        ),
        (
            lambda: a.stub.Checkpoint(
                colo_pb2.AgentCheckpointRequest(domain="bad name!", generation=1, epoch=2), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid name",
        ),
        (
            lambda: a.stub.PrepareSecondary(
                colo_pb2.PrepareSecondaryRequest(
                    domain="vm1", generation=1, epoch=1, spec=sim_spec("vm1"), pair_secret=b"short"
                ),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "pair_secret",
        ),
        (
            lambda: a.stub.PrepareSecondary(
                colo_pb2.PrepareSecondaryRequest(
                    domain="vm1", generation=0, epoch=1, spec=sim_spec("vm1"), pair_secret=b"s" * 32
                ),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "generation",
        ),
        (
            lambda: a.stub.PrepareSecondary(
                colo_pb2.PrepareSecondaryRequest(
                    domain="vm1",
                    generation=1,
                    epoch=1,
                    spec=colo_pb2.DomainSpec(domain="vm1"),
                    pair_secret=b"s" * 32,
                ),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "backend",
        ),
        (
            lambda: a.stub.StartPrimary(
                colo_pb2.StartPrimaryRequest(
                    domain="vm1",
                    generation=1,
                    epoch=1,
                    spec=sim_spec("vm1", pages=64),
                    pair_secret=b"s" * 32,
                    peer_data_address="127.0.0.1:1",
                    create_domain=True,
                ),
                timeout=10,
            ),
            grpc.StatusCode.UNAVAILABLE,
            "cannot reach",
        ),
    ]
    for call, code, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code, (text, err.value)
        assert text in (err.value.details() or ""), err.value.details()


def test_health_and_graceful_exit(agents: StartAgent) -> None:
    a = agents("host-a")
    reply = health_pb2_grpc.HealthStub(a.channel).Check(
        health_pb2.HealthCheckRequest(service="colo.v1.Agent"), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert a.stop() == 0
    assert "shutting down" in a.log()
