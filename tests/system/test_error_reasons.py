"""Every refusal a client can receive carries its ErrorReason in a
google.rpc.ErrorInfo (docs/design.md §7): asserted here on real calls to a
real coordinator and real agents, one case a reason."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cluster import AgentProcess, StartAgent, protect, start_agent, start_primary
from cluster import sim_spec as agent_spec
from coordinated import CoordinatorProcess, agents_alive, sim_spec, start_coordinator, wait_for
from world import Cluster, refusal

from colo_plane._proto import colo_pb2
from colo_plane.rpc import reason_name

pytestmark = pytest.mark.system

R = colo_pb2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    cluster = Cluster(tmp_path_factory.mktemp("reasons"))
    pair = cluster.protect(sim_spec("web", interval=1.0))
    yield World(cluster, pair)
    cluster.close()


@dataclass
class World:
    cluster: Cluster
    pair: colo_pb2.Pair  # "web", PROTECTED, host-a primary, host-b secondary

    @property
    def coord(self) -> CoordinatorProcess:
        return self.cluster.coord

    def agent(self, host: str) -> AgentProcess:
        return self.cluster.agents[host]


# (name, code, reason, call) — each call must be refused with that code and reason.
Case = tuple[str, grpc.StatusCode, int, Callable[[World], object]]

COORDINATOR_CASES: list[Case] = [
    (
        "bad-spec",
        grpc.StatusCode.INVALID_ARGUMENT,
        R.ERROR_REASON_INVALID_FIELD,
        lambda w: w.coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(spec=sim_spec("x", pages=0), primary_host="host-a"), timeout=5
        ),
    ),
    (
        "no-such-pair",
        grpc.StatusCode.NOT_FOUND,
        R.ERROR_REASON_PAIR_NOT_FOUND,
        lambda w: w.coord.stub.GetPair(colo_pb2.GetPairRequest(domain="nope"), timeout=5),
    ),
    (
        "pair-exists",
        grpc.StatusCode.ALREADY_EXISTS,
        R.ERROR_REASON_PAIR_EXISTS,
        lambda w: w.coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(spec=sim_spec("web"), primary_host="host-a"), timeout=5
        ),
    ),
    (
        "no-such-host",
        grpc.StatusCode.NOT_FOUND,
        R.ERROR_REASON_HOST_NOT_FOUND,
        lambda w: w.coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(spec=sim_spec("y"), primary_host="host-zz"), timeout=5
        ),
    ),
    (
        "expected-generation",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_GENERATION_MISMATCH,
        lambda w: w.coord.stub.Failover(
            colo_pb2.FailoverRequest(domain="web", expected_generation=999), timeout=10
        ),
    ),
    (
        "not-the-primary",
        grpc.StatusCode.PERMISSION_DENIED,
        R.ERROR_REASON_NOT_PAIR_HOST,
        lambda w: w.coord.stub.RequestCheckpoint(
            colo_pb2.RequestCheckpointRequest(domain="web", generation=w.pair.generation, host_id="host-c"),
            timeout=5,
        ),
    ),
    (
        "report-from-a-stranger",
        grpc.StatusCode.NOT_FOUND,
        R.ERROR_REASON_HOST_NOT_FOUND,
        lambda w: w.coord.stub.ReportSyncPoint(
            colo_pb2.ReportSyncPointRequest(
                domain="web", generation=w.pair.generation, epoch=1, host_id="ghost"
            ),
            timeout=5,
        ),
    ),
    (
        "report-of-a-future-generation",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_FUTURE_GENERATION,
        lambda w: w.coord.stub.ReportSyncPoint(
            colo_pb2.ReportSyncPointRequest(domain="web", generation=2**64 - 1, epoch=1, host_id="host-a"),
            timeout=5,
        ),
    ),
]

AGENT_CASES: list[Case] = [
    (
        "domain-not-held",
        grpc.StatusCode.NOT_FOUND,
        R.ERROR_REASON_DOMAIN_NOT_HELD,
        lambda w: w.agent("host-c").stub.GetStatus(colo_pb2.GetStatusRequest(domain="nope"), timeout=5),
    ),
    (
        "secondary-on-the-primary",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_ROLE_CONFLICT,
        lambda w: w.agent("host-a").stub.PrepareSecondary(
            colo_pb2.PrepareSecondaryRequest(
                domain="web", generation=w.pair.generation, epoch=1, spec=w.pair.spec, pair_secret=b"s" * 32
            ),
            timeout=5,
        ),
    ),
    (
        "checkpoint-on-the-secondary",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_ROLE_CONFLICT,
        lambda w: w.agent("host-b").stub.Checkpoint(
            colo_pb2.AgentCheckpointRequest(domain="web", generation=w.pair.generation, epoch=10**9),
            timeout=5,
        ),
    ),
    (
        "epoch-not-above",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_EPOCH_NOT_ABOVE,
        lambda w: w.agent("host-a").stub.Checkpoint(
            colo_pb2.AgentCheckpointRequest(domain="web", generation=w.pair.generation, epoch=1), timeout=5
        ),
    ),
    (
        "generation-never-issued",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_FUTURE_GENERATION,
        lambda w: w.agent("host-a").stub.Checkpoint(
            colo_pb2.AgentCheckpointRequest(domain="web", generation=w.pair.generation + 5, epoch=10**9),
            timeout=5,
        ),
    ),
    (
        "promote-needs-a-higher-generation",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_GENERATION_NOT_ABOVE,
        lambda w: w.agent("host-b").stub.Promote(
            colo_pb2.PromoteRequest(domain="web", generation=w.pair.generation, epoch=1), timeout=5
        ),
    ),
    (
        "short-secret",
        grpc.StatusCode.INVALID_ARGUMENT,
        R.ERROR_REASON_INVALID_FIELD,
        lambda w: w.agent("host-c").stub.PrepareSecondary(
            colo_pb2.PrepareSecondaryRequest(
                domain="z", generation=1, epoch=1, spec=agent_spec("z", pages=64), pair_secret=b"s"
            ),
            timeout=5,
        ),
    ),
    (
        "re-protect-without-a-guest",
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_NO_GUEST,
        lambda w: w.agent("host-c").stub.StartPrimary(start_primary("ghost", create=False), timeout=10),
    ),
    (
        "peer-unreachable",
        grpc.StatusCode.UNAVAILABLE,
        R.ERROR_REASON_PEER_UNREACHABLE,
        lambda w: w.agent("host-c").stub.StartPrimary(start_primary("lonely", create=True), timeout=10),
    ),
]


@pytest.mark.parametrize(
    ("name", "code", "reason", "call"),
    COORDINATOR_CASES + AGENT_CASES,
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_refusal_carries_its_reason(
    world: World, name: str, code: grpc.StatusCode, reason: int, call: Callable[[World], object]
) -> None:
    got_code, got_reason, metadata = refusal(lambda: call(world))
    assert (got_code, got_reason) == (code, reason_name(reason)), name  # type: ignore[arg-type]
    if reason == R.ERROR_REASON_INVALID_FIELD and name == "bad-spec":
        assert metadata["field"] == "spec.sim.pages"
    # Nothing changed: the pair is as it was.
    now = world.coord.pair("web")
    assert (now.generation, now.primary_host, now.secondary_host) == (
        world.pair.generation,
        world.pair.primary_host,
        world.pair.secondary_host,
    )


def test_states_that_refuse(world: World) -> None:
    """WRONG_STATE, STALE_GENERATION, HOST_UNUSABLE: a pair stopped, then protected again."""
    stub = world.coord.stub
    req = colo_pb2.ProtectDomainRequest(
        spec=sim_spec("tmp"), primary_host="host-c", secondary_host="host-a", wait=True
    )
    first = stub.ProtectDomain(req, timeout=60).pair
    stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain="tmp"), timeout=10)
    code, reason, _ = refusal(
        lambda: stub.Checkpoint(colo_pb2.CoordinatorCheckpointRequest(domain="tmp"), timeout=5)
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_STATE")
    again = stub.ProtectDomain(req, timeout=60).pair
    assert again.generation > first.generation
    stale = colo_pb2.RequestCheckpointRequest(domain="tmp", generation=first.generation, host_id="host-c")
    code, reason, _ = refusal(lambda: stub.RequestCheckpoint(stale, timeout=5))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STALE_GENERATION")
    stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain="tmp"), timeout=10)
    stub.DrainHost(colo_pb2.DrainHostRequest(host_id="host-c"), timeout=10)
    try:
        busy = colo_pb2.ProtectDomainRequest(spec=sim_spec("tmp2"), primary_host="host-c")
        code, reason, _ = refusal(lambda: stub.ProtectDomain(busy, timeout=5))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOST_UNUSABLE")
    finally:
        stub.DrainHost(colo_pb2.DrainHostRequest(host_id="host-c", cancel=True), timeout=10)


def test_no_placement(tmp_path: Path) -> None:
    coord = start_coordinator(tmp_path)
    agent = start_agent(tmp_path, "host-a", coord.address)
    try:
        wait_for("agent", lambda: agents_alive(coord, 1), timeout=15)
        req = colo_pb2.ProtectDomainRequest(spec=sim_spec("web"), primary_host="host-a")
        code, reason, _ = refusal(lambda: coord.stub.ProtectDomain(req, timeout=10))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_PLACEMENT")
    finally:
        agent.stop()
        coord.stop()


def test_agent_refusals_of_a_pair_in_play(agents: StartAgent) -> None:
    """PEER_REFUSED (wrong secret), DOMAIN_GONE (the guest destroyed under the role)."""
    a = agents("host-a", "--test-destroy-on-signal")
    b = agents("host-b")
    spec = agent_spec("vm1", pages=256)
    b.stub.PrepareSecondary(
        colo_pb2.PrepareSecondaryRequest(
            domain="vm1", generation=1, epoch=1, spec=spec, pair_secret=b"s" * 32, peer_data_address=a.data
        ),
        timeout=10,
    )
    wrong = start_primary("vm1", create=True, peer=b.data)
    wrong.spec.CopyFrom(spec)
    wrong.pair_secret = b"x" * 32
    code, reason, _ = refusal(lambda: a.stub.StartPrimary(wrong, timeout=10))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PEER_REFUSED")
    b.stub.Release(colo_pb2.ReleaseRequest(domain="vm1", generation=1), timeout=10)
    a.stub.Release(colo_pb2.ReleaseRequest(domain="vm1", generation=1), timeout=10)
    protect(a, b, spec, generation=2)
    os.kill(a.proc.pid, signal.SIGUSR1)
    wait_for("gone", lambda: a.status("vm1").domain_gone or None)
    code, reason, _ = refusal(
        lambda: a.stub.Checkpoint(
            colo_pb2.AgentCheckpointRequest(domain="vm1", generation=2, epoch=9), timeout=5
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DOMAIN_GONE")
