"""The coordinator with real processes: one `colo coordinator`, three
`colo agent`s (sim backend, verify on), loopback.

Bounds asserted (failure detection: heartbeats every 0.1 s, lost after 0.5 s
and a refused confirming call; checkpoints every 0.3 s):
  protect -> PROTECTED                          <= 3.0 s  (1024 pages)
  kill -9 of the primary -> secondary promoted  <= 1.5 s  (observed 0.2-0.3 s)
  promoted -> re-protected on the third host    <= 3.0 s  (observed 0.02-0.1 s)
  kill -9 of the secondary -> unprotected       <= 1.5 s, re-protected <= 3.0 s later
  SIGSTOP of the primary -> promoted            <= 2.0 s  (the confirming call times out)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster import AgentProcess, start_agent
from coordinated import (
    CoordinatorProcess,
    agents_alive,
    free_port,
    sim_spec,
    start_cluster,
    start_coordinator,
    wait_for,
)

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.store import SqliteStore
from colo_plane.tools.localcluster import COLO

pytestmark = pytest.mark.system

PROTECT_BOUND = 3.0
PROMOTE_BOUND = 1.5
REPROTECT_BOUND = 3.0
UNPROTECT_BOUND = 1.5

PROTECTED = colo_pb2.PAIR_STATE_PROTECTED
UNPROTECTED = colo_pb2.PAIR_STATE_UNPROTECTED


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.coord, self.agents = start_cluster(tmp)
        self.extra: list[CoordinatorProcess] = []

    def agent(self, host: str) -> AgentProcess:
        return next(a for a in self.agents if a.host_id == host)

    def protect(self, domain: str, primary: str, secondary: str = "", **spec: float) -> float:
        """Protects and waits for PROTECTED; returns the seconds it took."""
        t0 = time.monotonic()
        self.coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(
                spec=sim_spec(domain, **spec), primary_host=primary, secondary_host=secondary
            ),
            timeout=10,
        )
        wait_for(f"{domain} PROTECTED", lambda: self.coord.pair(domain).state == PROTECTED, timeout=15)
        return time.monotonic() - t0

    def close(self) -> None:
        for agent in self.agents:
            code = agent.stop()
            assert code in (0, -9), f"agent {agent.host_id} exited with {code}:\n{agent.log()[-3000:]}"
        code = self.coord.stop()
        assert code in (0, -9), f"coordinator exited with {code}:\n{self.coord.log()[-3000:]}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.close()


def _alternate(events: list[colo_pb2.Event]) -> list[tuple[int, int]]:
    """(kind, epoch) of issue / completion / failure, in order: asserts never two at once."""
    seq = [
        (e.kind, e.epoch)
        for e in events
        if e.kind
        in (
            colo_pb2.EVENT_KIND_CHECKPOINT_ISSUED,
            colo_pb2.EVENT_KIND_CHECKPOINT_COMPLETED,
            colo_pb2.EVENT_KIND_CHECKPOINT_FAILED,
        )
        and e.trigger != colo_pb2.CHECKPOINT_TRIGGER_FIRST_BOOT
    ]
    open_epoch = 0
    for kind, epoch in seq:
        if kind == colo_pb2.EVENT_KIND_CHECKPOINT_ISSUED:
            assert open_epoch == 0, f"epoch {epoch} issued while {open_epoch} was in flight"
            open_epoch = epoch
        else:
            assert epoch == open_epoch, f"epoch {epoch} ended while {open_epoch} was in flight"
            open_epoch = 0
    return seq


def test_protect_then_timer_requested_and_manual_checkpoints(cluster: Cluster) -> None:
    coord = cluster.coord
    took = cluster.protect("vm1", "host-a", interval=0.3)
    assert took <= PROTECT_BOUND, f"PROTECTED after {took:.2f} s"
    pair = coord.pair("vm1")
    assert pair.generation == 1 and pair.primary_host == "host-a"
    assert pair.secondary_host in ("host-b", "host-c") and pair.checkpoint_counts.first_boot == 1
    # Periodic: the 0.3 s interval fires on its own.
    wait_for("3 timer checkpoints", lambda: coord.pair("vm1").checkpoint_counts.timer >= 3, timeout=5)
    # Requested by the primary (as its proxy does on a divergence), several at once: they coalesce.
    replies = [
        coord.stub.RequestCheckpoint(
            colo_pb2.RequestCheckpointRequest(
                domain="vm1",
                generation=1,
                epoch=pair.epoch,
                host_id="host-a",
                request_seq=i,
                reason=colo_pb2.CHECKPOINT_REQUEST_REASON_OUTPUT_MISMATCH,
            ),
            timeout=5,
        )
        for i in range(5)
    ]
    assert all(r.generation == 1 for r in replies)
    wait_for("a request checkpoint", lambda: coord.pair("vm1").checkpoint_counts.request >= 1, timeout=5)
    time.sleep(0.1)  # the requests' checkpoints are done: the manual one is not folded into them
    # On demand, waiting for the figures.
    manual = coord.stub.Checkpoint(colo_pb2.CoordinatorCheckpointRequest(domain="vm1", wait=True), timeout=10)
    assert manual.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH and manual.epoch > pair.epoch
    assert not manual.coalesced
    after = coord.pair("vm1")
    counts = after.checkpoint_counts
    assert counts.request >= 1 and counts.manual >= 1 and counts.timer >= 3 and counts.failed == 0
    assert after.divergences == 5 and after.generation == 1
    # 5 requests were served by fewer checkpoints than requests, or each by its own: never two at once.
    assert counts.request <= 5
    assert coord.metric("colo_checkpoints_total", trigger="timer") >= 3
    assert coord.metric("colo_checkpoints_total", trigger="request") >= 1
    assert coord.metric("colo_checkpoints_total", trigger="manual") >= 1
    assert coord.metric("colo_checkpoint_request_to_issue_seconds_count", trigger="request") >= 1
    assert coord.metric("colo_checkpoint_issue_to_resumed_seconds_count") >= 5
    assert (
        coord.metric("colo_pairs", state="PROTECTED") + coord.metric("colo_pairs", state="CHECKPOINTING") == 1
    )
    assert coord.metric("grpc_server_handled_total", grpc_method="RequestCheckpoint", grpc_code="OK") == 5
    events = coord.events("vm1")
    triggers = {e.trigger for e in events if e.kind == colo_pb2.EVENT_KIND_CHECKPOINT_COMPLETED}
    assert {
        colo_pb2.CHECKPOINT_TRIGGER_TIMER,
        colo_pb2.CHECKPOINT_TRIGGER_REQUEST,
        colo_pb2.CHECKPOINT_TRIGGER_MANUAL,
        colo_pb2.CHECKPOINT_TRIGGER_FIRST_BOOT,
    } <= triggers
    seq = _alternate(events)
    epochs = [epoch for kind, epoch in seq if kind == colo_pb2.EVENT_KIND_CHECKPOINT_ISSUED]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    # The secondary's own reports arrive too (SYNC_POINT events), and its copy verifies.
    assert any(
        e.kind == colo_pb2.EVENT_KIND_SYNC_POINT and e.control_id == colo_pb2.CONTROL_ID_SECONDARY_RESUMED
        for e in events
    )
    assert all(e.verify.outcome != colo_pb2.VERIFY_OUTCOME_MISMATCH for e in events)


def test_kill_primary_promotes_secondary_then_reprotects_on_third_host(cluster: Cluster) -> None:
    coord = cluster.coord
    cluster.protect("vm1", "host-a", "host-b")
    wait_for("a timer checkpoint", lambda: coord.pair("vm1").checkpoint_counts.timer >= 1, timeout=5)
    before = coord.pair("vm1")
    t0 = time.monotonic()
    cluster.agent("host-a").proc.send_signal(signal.SIGKILL)
    cluster.agent("host-a").proc.wait()
    wait_for("host-b promoted", lambda: coord.pair("vm1").primary_host == "host-b", timeout=5, every=0.005)
    promoted = time.monotonic() - t0
    # Serving: primary, guest running (a re-protection's first boot may pause it for a moment).
    status = wait_for(
        "host-b serving",
        lambda: (
            (st := cluster.agent("host-b").status("vm1")).role == colo_pb2.ROLE_PRIMARY
            and not st.paused
            and st
        ),
        timeout=2,
    )
    assert status.generation > before.generation  # fenced: the old primary's generation is refused there
    wait_for(
        "re-protected",
        lambda: (p := coord.pair("vm1")).state == PROTECTED and p.secondary_host == "host-c",
        timeout=10,
        every=0.005,
    )
    reprotected = time.monotonic() - t0 - promoted
    print(f"\nkill -9 primary -> promoted {promoted:.3f} s, then re-protected in {reprotected:.3f} s")
    assert promoted <= PROMOTE_BOUND, f"promoted after {promoted:.2f} s"
    assert reprotected <= REPROTECT_BOUND, f"re-protected {reprotected:.2f} s after promotion"
    after = coord.pair("vm1")
    assert after.generation == before.generation + 2  # promote, then re-protect
    assert after.failovers == 1 and after.checkpoint_counts.first_boot == 2
    # The new pair checkpoints and its copy is right.
    reply = coord.stub.Checkpoint(colo_pb2.CoordinatorCheckpointRequest(domain="vm1", wait=True), timeout=10)
    assert reply.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH and reply.generation == after.generation
    assert cluster.agent("host-c").status("vm1").role == colo_pb2.ROLE_SECONDARY
    kinds = [(e.kind, e.cause) for e in coord.events("vm1")]
    assert (colo_pb2.EVENT_KIND_FAILOVER_COMPLETED, colo_pb2.FAILOVER_CAUSE_PRIMARY_LOST) in kinds
    assert coord.metric("colo_failovers_total", cause="primary_lost") == 1
    agents = {a.host_id: a for a in coord.stub.ListAgents(colo_pb2.ListAgentsRequest(), timeout=5).agents}
    assert not agents["host-a"].alive and not agents["host-a"].roles
    assert coord.metric("colo_agents_alive") == 2


def test_frozen_primary_is_fenced_and_released_when_it_returns(cluster: Cluster) -> None:
    """SIGSTOP stands in for a hung or partitioned host: its process still holds
    the port, so the coordinator's confirming call times out rather than being
    refused.  The secondary is promoted; when the old primary wakes up it is
    told it was superseded and released: no second primary runs on."""
    coord = cluster.coord
    cluster.protect("vm1", "host-a", "host-b", interval=0.3)
    old = cluster.agent("host-a")
    t0 = time.monotonic()
    old.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            "host-b promoted", lambda: coord.pair("vm1").primary_host == "host-b", timeout=5, every=0.005
        )
        promoted = time.monotonic() - t0
        wait_for(
            "re-protected on host-c",
            lambda: (p := coord.pair("vm1")).state == PROTECTED and p.secondary_host == "host-c",
            timeout=10,
        )
        # Checkpoints go on for the new pair while the old primary is still frozen.
        epoch = coord.pair("vm1").epoch
        wait_for("checkpoints continue", lambda: coord.pair("vm1").epoch >= epoch + 2, timeout=5)
    finally:
        old.proc.send_signal(signal.SIGCONT)
    print(f"\nSIGSTOP primary -> promoted {promoted:.3f} s")
    assert promoted <= PROMOTE_BOUND + 0.5  # + the confirming call's deadline
    wait_for(
        "old primary released",
        lambda: not old.stub.GetStatus(colo_pb2.GetStatusRequest(), timeout=5).domains,
        timeout=10,
    )
    assert "still holds vm1" in coord.log()
    assert coord.pair("vm1").primary_host == "host-b"


def test_kill_secondary_unprotects_then_reprotects(cluster: Cluster) -> None:
    coord = cluster.coord
    cluster.protect("vm1", "host-a", "host-b")
    before = coord.pair("vm1")
    t0 = time.monotonic()
    cluster.agent("host-b").proc.send_signal(signal.SIGKILL)
    cluster.agent("host-b").proc.wait()
    wait_for(
        "secondary dropped", lambda: coord.pair("vm1").secondary_host != "host-b", timeout=5, every=0.005
    )
    dropped = time.monotonic() - t0
    wait_for("primary told", lambda: cluster.agent("host-a").status("vm1").generation > before.generation)
    wait_for(
        "re-protected on host-c",
        lambda: (p := coord.pair("vm1")).state == PROTECTED and p.secondary_host == "host-c",
        timeout=10,
        every=0.005,
    )
    reprotected = time.monotonic() - t0 - dropped
    print(f"\nkill -9 secondary -> unprotected {dropped:.3f} s, then re-protected in {reprotected:.3f} s")
    assert dropped <= UNPROTECT_BOUND and reprotected <= REPROTECT_BOUND
    after = coord.pair("vm1")
    assert after.primary_host == "host-a" and after.generation == before.generation + 2
    states = [
        (e.from_state, e.to_state, e.cause)
        for e in coord.events("vm1")
        if e.kind == colo_pb2.EVENT_KIND_STATE_CHANGED and e.to_state == UNPROTECTED
    ]
    assert states and states[-1][2] in (
        colo_pb2.FAILOVER_CAUSE_SECONDARY_LOST,
        colo_pb2.FAILOVER_CAUSE_SECONDARY_UNHEALTHY,
    )
    reply = coord.stub.Checkpoint(colo_pb2.CoordinatorCheckpointRequest(domain="vm1", wait=True), timeout=10)
    assert reply.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH


def test_restarted_agent_loses_its_roles_at_once(tmp_path: Path) -> None:
    """An agent back with a new incarnation has lost its domains: its roles
    fail over when it registers, not when a (long) heartbeat timeout passes.
    (Checkpoints are not armed here: an armed checkpoint would notice the
    lost secondary on its own, through the proxy's link, before it registers.)  Its old port
    refusing connections is a fact too, and may be noticed first: either way the roles move at
    once."""
    coord, agents = start_cluster(tmp_path, 3, "--heartbeat-timeout", "20", "--no-arm-checkpoints")
    try:
        spec = sim_spec("vm1", interval=30.0)  # no checkpoint to notice the loss first
        coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a", secondary_host="host-b"),
            timeout=10,
        )
        wait_for("PROTECTED", lambda: coord.pair("vm1").state == PROTECTED)
        generation = coord.pair("vm1").generation
        agents[1].proc.send_signal(signal.SIGKILL)
        agents[1].proc.wait()
        t0 = time.monotonic()
        agents[1] = start_agent(tmp_path, "host-b", coord.address, "--verify", "--label", "zone=z1")
        wait_for(
            "re-protected",
            lambda: (p := coord.pair("vm1")).state == PROTECTED and p.generation == generation + 2,
            timeout=10,
        )
        assert time.monotonic() - t0 < 10  # far below the 20 s heartbeat timeout
        log = coord.log()
        assert "came back without vm1" in log or "its port refuses connections" in log
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()


def test_coordinator_restart_resumes_pairs_without_a_new_first_boot(tmp_path: Path) -> None:
    port = free_port()
    coord = start_coordinator(tmp_path, listen=f"127.0.0.1:{port}")
    agents = [start_agent(tmp_path, h, coord.address, "--verify") for h in ("host-a", "host-b", "host-c")]
    restarted: CoordinatorProcess | None = None
    try:
        wait_for("agents", lambda: agents_alive(coord, 3))
        for name, primary in (("vm1", "host-a"), ("vm2", "host-b")):
            coord.stub.ProtectDomain(
                colo_pb2.ProtectDomainRequest(spec=sim_spec(name, interval=0.3), primary_host=primary),
                timeout=10,
            )
        for name in ("vm1", "vm2"):
            wait_for(
                f"{name} checkpoints", lambda n=name: coord.pair(n).checkpoint_counts.timer >= 2, timeout=10
            )  # type: ignore[misc]
        time.sleep(0.3)  # let the write-behind of checkpoint progress run
        before = {n: coord.pair(n) for n in ("vm1", "vm2")}
        secondary_checkpoints = {
            n: next(a for a in agents if a.host_id == before[n].secondary_host).status(n).checkpoints
            for n in before
        }
        coord.stop(signal.SIGKILL)
        time.sleep(0.3)
        restarted = start_coordinator(tmp_path, listen=f"127.0.0.1:{port}", name="coordinator2")
        for name, old in before.items():
            pair = restarted.pair(name)
            assert pair.state == PROTECTED and pair.generation == old.generation, pair
            assert (pair.primary_host, pair.secondary_host) == (old.primary_host, old.secondary_host)
        wait_for(
            "agents re-registered",
            lambda: restarted is not None and restarted.log().count("re-registered") >= 3,
            timeout=10,
        )
        for name, old in before.items():
            wait_for(
                f"{name} checkpoints continue",
                lambda n=name, o=old: restarted is not None and restarted.pair(n).epoch > o.epoch + 2,  # type: ignore[misc]
                timeout=10,
            )
            pair = restarted.pair(name)
            assert pair.generation == old.generation and pair.checkpoint_counts.first_boot == 1
            assert pair.state in (PROTECTED, colo_pb2.PAIR_STATE_CHECKPOINTING) and pair.failovers == 0
            secondary = next(a for a in agents if a.host_id == pair.secondary_host).status(name)
            assert secondary.checkpoints > secondary_checkpoints[name]  # the same secondary, no first boot
            assert secondary.generation == old.generation
        reply = restarted.stub.Checkpoint(
            colo_pb2.CoordinatorCheckpointRequest(domain="vm1", wait=True), timeout=10
        )
        assert reply.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH
    finally:
        for agent in agents:
            agent.stop()
        if restarted is not None:
            assert restarted.stop() == 0
        coord.stop()


def test_restart_during_a_failover_finishes_it(tmp_path: Path) -> None:
    """The coordinator dies right after storing FAILING_OVER (the fencing
    generation) and before Promote: the next one finishes the promotion."""
    port = free_port()
    coord = start_coordinator(tmp_path, listen=f"127.0.0.1:{port}")
    agents = [start_agent(tmp_path, h, coord.address, "--verify") for h in ("host-a", "host-b", "host-c")]
    restarted: CoordinatorProcess | None = None
    try:
        wait_for("agents", lambda: agents_alive(coord, 3))
        coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(
                spec=sim_spec("vm1", interval=0.3), primary_host="host-a", secondary_host="host-b"
            ),
            timeout=10,
        )
        wait_for("PROTECTED", lambda: coord.pair("vm1").state == PROTECTED)
        coord.stop(signal.SIGKILL)
        # What begin_failover writes before any agent hears of it.
        store = SqliteStore(tmp_path / "colo.db")
        (row,) = store.load_pairs()
        row.pair.state, row.pair.generation = colo_pb2.PAIR_STATE_FAILING_OVER, row.pair.generation + 1
        store.save_pairs([row])
        store.close()
        restarted = start_coordinator(tmp_path, listen=f"127.0.0.1:{port}", name="coordinator2")
        wait_for(
            "promoted and re-protected",
            lambda: (
                restarted is not None
                and (p := restarted.pair("vm1")).state == PROTECTED
                and p.primary_host == "host-b"
            ),
            timeout=15,
        )
        status = agents[1].status("vm1")
        assert status.role == colo_pb2.ROLE_PRIMARY and status.generation >= row.pair.generation
        assert "promoted: FAILING_OVER -> UNPROTECTED (generation 2): host-b promoted" in restarted.log()
    finally:
        for agent in agents:
            agent.stop()
        if restarted is not None:
            restarted.stop()
        coord.stop()


def test_drain_host_empties_it(cluster: Cluster) -> None:
    coord = cluster.coord
    cluster.protect("vm1", "host-a", "host-b")  # host-a is primary
    cluster.protect("vm2", "host-b", "host-a")  # host-a is secondary
    reply = coord.stub.DrainHost(colo_pb2.DrainHostRequest(host_id="host-a", wait=True), timeout=60)
    assert reply.remaining_roles == 0, reply
    moves = {m.domain: m for m in reply.moves}
    assert (
        moves["vm1"].action == colo_pb2.DRAIN_ACTION_SWITCHOVER
        and moves["vm1"].done
        and not moves["vm1"].error
    )
    assert moves["vm2"].action == colo_pb2.DRAIN_ACTION_REPROTECT_ELSEWHERE and moves["vm2"].done
    for name in ("vm1", "vm2"):
        wait_for(
            f"{name} PROTECTED off host-a",
            lambda n=name: (
                (p := coord.pair(n)).state == PROTECTED and "host-a" not in (p.primary_host, p.secondary_host)
            ),  # type: ignore[misc]
            timeout=10,
        )
    assert {coord.pair("vm1").primary_host, coord.pair("vm1").secondary_host} == {"host-b", "host-c"}
    agents = {a.host_id: a for a in coord.stub.ListAgents(colo_pb2.ListAgentsRequest(), timeout=5).agents}
    assert agents["host-a"].draining and not agents["host-a"].roles
    status = cluster.agent("host-a").stub.GetStatus(colo_pb2.GetStatusRequest(), timeout=5)
    assert not status.domains  # released on the host itself
    # A draining host takes no new role.
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(spec=sim_spec("vm3"), primary_host="host-a"), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "draining" in (
        err.value.details() or ""
    )
    coord.stub.DrainHost(colo_pb2.DrainHostRequest(host_id="host-a", cancel=True), timeout=5)
    cluster.protect("vm3", "host-a")


def test_planned_failover_swaps_roles(cluster: Cluster) -> None:
    coord = cluster.coord
    cluster.protect("vm1", "host-a", "host-b", interval=0.3)
    before = coord.pair("vm1")
    reply = coord.stub.Failover(
        colo_pb2.FailoverRequest(domain="vm1", expected_generation=before.generation), timeout=30
    )
    assert reply.pair.primary_host == "host-b" and reply.pair.generation == before.generation + 1
    wait_for(
        "swapped and PROTECTED",
        lambda: (p := coord.pair("vm1")).state == PROTECTED and p.secondary_host == "host-a",
        timeout=10,
    )
    status = cluster.agent("host-b").status("vm1")
    assert status.role == colo_pb2.ROLE_PRIMARY and not status.paused
    after = coord.pair("vm1")
    assert after.checkpoint_counts.manual >= 1  # the final checkpoint
    reply2 = coord.stub.Checkpoint(colo_pb2.CoordinatorCheckpointRequest(domain="vm1", wait=True), timeout=10)
    assert reply2.verify.outcome == colo_pb2.VERIFY_OUTCOME_MATCH
    with pytest.raises(grpc.RpcError) as err:  # a stale view is refused
        coord.stub.Failover(
            colo_pb2.FailoverRequest(domain="vm1", expected_generation=before.generation), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not the expected" in (err.value.details() or "")


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value.code(), err.value.details() or ""  # type: ignore[attr-defined]


def test_bad_client_input_gets_clear_errors(cluster: Cluster) -> None:
    coord = cluster.coord
    stub = coord.stub
    cluster.protect("vm1", "host-a", "host-b")
    cases = [
        (
            lambda: stub.GetPair(colo_pb2.GetPairRequest(domain="nope"), timeout=5),
            grpc.StatusCode.NOT_FOUND,
            "colo pairs",
        ),
        (
            lambda: stub.Checkpoint(colo_pb2.CoordinatorCheckpointRequest(domain="nope"), timeout=5),
            grpc.StatusCode.NOT_FOUND,
            "no pair named",
        ),
        (
            lambda: stub.ProtectDomain(
                colo_pb2.ProtectDomainRequest(spec=sim_spec("vm9"), primary_host="host-z"), timeout=5
            ),
            grpc.StatusCode.NOT_FOUND,
            "colo agents",
        ),
        (
            lambda: stub.DrainHost(colo_pb2.DrainHostRequest(host_id="host-z"), timeout=5),
            grpc.StatusCode.NOT_FOUND,
            "not a known host",
        ),
        (
            lambda: stub.ProtectDomain(
                colo_pb2.ProtectDomainRequest(spec=sim_spec("vm1"), primary_host="host-c"), timeout=5
            ),
            grpc.StatusCode.ALREADY_EXISTS,
            "colo unprotect vm1",
        ),
        (
            lambda: stub.ProtectDomain(
                colo_pb2.ProtectDomainRequest(
                    spec=sim_spec("vm9"), primary_host="host-a", secondary_host="host-a"
                ),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs two hosts",
        ),
        (
            lambda: stub.ProtectDomain(
                colo_pb2.ProtectDomainRequest(spec=sim_spec("bad name!"), primary_host="host-a"), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid name",
        ),
        (
            lambda: stub.ProtectDomain(
                colo_pb2.ProtectDomainRequest(spec=colo_pb2.DomainSpec(domain="vm9"), primary_host="host-a"),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "backend",
        ),
        (
            lambda: stub.ProtectDomain(colo_pb2.ProtectDomainRequest(spec=sim_spec("vm9")), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "primary_host is required",
        ),
        (
            lambda: stub.RequestCheckpoint(
                colo_pb2.RequestCheckpointRequest(domain="vm1", generation=1, host_id="host-b"), timeout=5
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "not the primary",
        ),
    ]
    for call, code, text in cases:
        got, details = _code(call)
        assert got == code and text in details, (code, text, got, details)
    # Failover of a pair that is not protected (stopped: no secondary).
    stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain="vm1"), timeout=10)
    got, details = _code(lambda: stub.Failover(colo_pb2.FailoverRequest(domain="vm1"), timeout=10))
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "not PROTECTED" in details, details
    pair = coord.pair("vm1")
    assert pair.state == colo_pb2.PAIR_STATE_STOPPED
    assert cluster.agent("host-a").status("vm1").state == UNPROTECTED  # the guest keeps running there
    assert not cluster.agent("host-b").stub.GetStatus(colo_pb2.GetStatusRequest(), timeout=5).domains
    # The generation never goes back: protecting the name again carries on from it.
    cluster.protect("vm1", "host-b", "host-c")
    assert coord.pair("vm1").generation > pair.generation
    assert coord.metric("grpc_server_handled_total", grpc_method="GetPair", grpc_code="NOT_FOUND") == 1


def _colo(*args: str, coordinator: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COLO, *args, "--coordinator", coordinator], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_tables_json_and_exit_codes(cluster: Cluster) -> None:
    address = cluster.coord.address
    done = _colo(
        "protect",
        "vm1",
        "--primary",
        "host-a",
        "--pages",
        "512",
        "--verify",
        "--interval",
        "0.3",
        "--wait",
        "--json",
        coordinator=address,
    )
    assert done.returncode == 0, done.stderr
    assert '"state": "PAIR_STATE_PROTECTED"' in done.stdout
    table = _colo("pairs", coordinator=address)
    assert table.returncode == 0 and "vm1" in table.stdout
    assert "PROTECTED" in table.stdout or "CHECKPOINTING" in table.stdout
    assert "host-a" in _colo("agents", coordinator=address).stdout
    assert "checkpoint" in _colo("checkpoint", "vm1", "--wait", coordinator=address).stdout
    watch = _colo("watch", "--domain", "vm1", "--history", "50", "--for", "0.5", coordinator=address)
    assert watch.returncode == 0 and "CHECKPOINT_COMPLETED" in watch.stdout
    flips = _colo(
        "watch",
        "--domain",
        "vm1",
        "--history",
        "50",
        "--for",
        "0.5",
        "--checkpoint-states",
        coordinator=address,
    )
    assert "PROTECTED -> CHECKPOINTING" in flips.stdout and "PROTECTED -> CHECKPOINTING" not in watch.stdout
    refused = _colo("pair", "nope", coordinator=address)
    assert refused.returncode == 1 and "NOT_FOUND" in refused.stderr and "colo pairs" in refused.stderr
    unreachable = _colo("pairs", coordinator=f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3 and "cannot reach the coordinator" in unreachable.stderr
    usage = subprocess.run([*COLO, "protect"], capture_output=True, text=True, timeout=30, check=False)
    assert usage.returncode == 2
    assert sys.executable  # the CLI runs under this interpreter
