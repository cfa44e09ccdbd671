"""A domain that vanishes while its host lives (an administrator's destroy,
a guest crash): the side that still holds the guest carries on, the last
copy is never released, no empty domain is copied over the pair's data,
and a pair with no copy left says LOST.  The agents' hidden
--test-destroy-on-signal flag destroys their sim domains on SIGUSR1
(primaries) and SIGUSR2 (secondaries), as `xl destroy` would."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster import StartAgent, start_primary
from coordinated import CoordinatorProcess, loadgen_in_thread, wait_for
from world import Cluster, refusal

from colo_plane._proto import colo_pb2
from colo_plane.rpc import duration

pytestmark = pytest.mark.system

GONE_CAUSES = {colo_pb2.FAILOVER_CAUSE_PRIMARY_DOMAIN_GONE, colo_pb2.FAILOVER_CAUSE_SECONDARY_DOMAIN_GONE}
FLAGS = ("--verify", "--test-destroy-on-signal")


def _spec(domain: str, divergence: float = 0.05) -> colo_pb2.DomainSpec:
    return colo_pb2.DomainSpec(
        domain=domain,
        verify=True,
        checkpoint_interval=duration(1.0),
        sim=colo_pb2.SimDomainSpec(pages=4096, dirty_rate=5_000, seed=3, divergence_probability=divergence),
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, agent_flags=FLAGS)
    yield c
    c.close()


def _failovers(coord: CoordinatorProcess, domain: str) -> list[colo_pb2.Event]:
    return [e for e in coord.events(domain) if e.kind == colo_pb2.EVENT_KIND_FAILOVER_STARTED]


def _first_boots_from(coord: CoordinatorProcess, domain: str, host: str, after: int) -> list[colo_pb2.Event]:
    """SECONDARY_PLACED events (each starts a first boot) while host was the primary, after sequence."""
    out = []
    primary = ""
    for e in coord.events(domain):
        if (
            e.kind == colo_pb2.EVENT_KIND_FAILOVER_COMPLETED
            and e.cause == colo_pb2.FAILOVER_CAUSE_PRIMARY_DOMAIN_GONE
        ):
            primary = e.host_id
        if e.kind == colo_pb2.EVENT_KIND_SECONDARY_PLACED and e.sequence > after and primary in ("", host):
            out.append(e)
    return out


def test_destroyed_primary_domain_promotes_the_secondary(cluster: Cluster) -> None:
    before = cluster.protect(_spec("web"))
    thread, out = loadgen_in_thread(cluster.coord.address, "web", seconds=8.0)
    time.sleep(2.5)
    mark = max(e.sequence for e in cluster.coord.events("web"))
    cluster.destroy("host-a", "primary")
    pair = wait_for(
        "the secondary promoted",
        lambda: (p := cluster.coord.pair("web")).primary_host == "host-b" and p,
        timeout=10,
    )
    thread.join(timeout=120)
    (report,) = out
    assert report.acknowledged_writes > 500
    assert report.acknowledged_writes_lost == 0, report  # every acknowledged write reads back
    assert report.reads_of_values_never_written == 0, report
    assert pair.generation > before.generation
    causes = [e.cause for e in _failovers(cluster.coord, "web") if e.sequence > mark]
    assert causes[0] == colo_pb2.FAILOVER_CAUSE_PRIMARY_DOMAIN_GONE, causes
    # The only good copy was never blamed and released.
    assert colo_pb2.FAILOVER_CAUSE_SECONDARY_UNHEALTHY not in causes
    # Re-protected from the promoted guest, on the third host: never from host-a's empty domain.
    again = wait_for(
        "re-protected", lambda: (p := cluster.coord.pair("web")).state == colo_pb2.PAIR_STATE_PROTECTED and p
    )
    assert (again.primary_host, again.secondary_host) in (("host-b", "host-c"), ("host-b", "host-a"))
    placed = [e for e in cluster.coord.events("web") if e.kind == colo_pb2.EVENT_KIND_SECONDARY_PLACED]
    assert all(e.sequence <= mark or e.host_id != "host-b" for e in placed)


def test_a_primary_agent_that_dropped_the_domain_fails_over(cluster: Cluster) -> None:
    """The checker's case: the primary's agent no longer holds the domain (a Release
    sent to it directly) while its host lives.  Checkpoints answer NOT_FOUND; the
    secondary, the only copy, is promoted, and nothing is re-protected from an
    empty new domain on host-a."""
    before = cluster.protect(_spec("web"))
    thread, out = loadgen_in_thread(cluster.coord.address, "web", seconds=6.0)
    time.sleep(2.0)
    cluster.agents["host-a"].stub.Release(
        colo_pb2.ReleaseRequest(domain="web", generation=before.generation, reason="a stranger"), timeout=10
    )
    pair = wait_for(
        "the secondary promoted",
        lambda: (p := cluster.coord.pair("web")).primary_host == "host-b" and p,
        timeout=10,
    )
    thread.join(timeout=120)
    (report,) = out
    assert report.acknowledged_writes > 200
    assert report.acknowledged_writes_lost == 0, report
    assert report.reads_of_values_never_written == 0, report
    assert pair.generation > before.generation
    causes = [e.cause for e in _failovers(cluster.coord, "web")]
    assert colo_pb2.FAILOVER_CAUSE_SECONDARY_UNHEALTHY not in causes, causes


def test_destroyed_secondary_domain_reprotects_from_the_primary(cluster: Cluster) -> None:
    before = cluster.protect(_spec("web"))
    thread, out = loadgen_in_thread(cluster.coord.address, "web", seconds=6.0)
    time.sleep(2.0)
    mark = max(e.sequence for e in cluster.coord.events("web"))
    cluster.destroy("host-b", "secondary")
    pair = wait_for(
        "re-protected on another secondary",
        lambda: (
            (p := cluster.coord.pair("web")).state == colo_pb2.PAIR_STATE_PROTECTED
            and p.generation > before.generation
            and p
        ),
        timeout=10,
    )
    thread.join(timeout=120)
    (report,) = out
    assert report.acknowledged_writes_lost == 0, report
    assert report.reads_of_values_never_written == 0, report
    assert pair.primary_host == "host-a"  # the primary kept its guest
    causes = [e.cause for e in _failovers(cluster.coord, "web") if e.sequence > mark]
    assert causes[0] == colo_pb2.FAILOVER_CAUSE_SECONDARY_DOMAIN_GONE, causes


def test_both_domains_gone_is_lost_not_protected(cluster: Cluster) -> None:
    cluster.protect(_spec("web", divergence=0.0))
    cluster.destroy("host-a", "primary")
    cluster.destroy("host-b", "secondary")
    pair = wait_for("LOST", lambda: (p := cluster.coord.pair("web")).state == colo_pb2.PAIR_STATE_LOST and p)
    assert "LOST" in pair.last_error
    assert not pair.service_endpoint
    time.sleep(1.5)  # and it stays so: nothing is re-protected from an empty domain
    assert cluster.coord.pair("web").state == colo_pb2.PAIR_STATE_LOST
    assert not {e.cause for e in _failovers(cluster.coord, "web")} - GONE_CAUSES - {0}
    # The operator's way out: unprotect, then protect anew.
    cluster.coord.stub.UnprotectDomain(colo_pb2.UnprotectDomainRequest(domain="web"), timeout=10)
    assert cluster.coord.pair("web").state == colo_pb2.PAIR_STATE_STOPPED


def test_the_only_copy_gone_while_unprotected_is_lost(tmp_path: Path) -> None:
    """Two hosts: the secondary's host dies (nowhere to re-protect), then the
    primary's domain goes: LOST, and no empty domain is made in its place."""
    c = Cluster(tmp_path, ("host-a", "host-b"), FLAGS)
    try:
        c.protect(_spec("web", divergence=0.0))
        c.agents["host-b"].stop(signal.SIGKILL)
        wait_for("unprotected", lambda: c.coord.pair("web").state == colo_pb2.PAIR_STATE_UNPROTECTED or None)
        c.destroy("host-a", "primary")
        pair = wait_for("LOST", lambda: (p := c.coord.pair("web")).state == colo_pb2.PAIR_STATE_LOST and p)
        assert pair.primary_host == "host-a"
    finally:
        c.close()


def test_start_primary_refuses_to_create_over_a_pair(agents: StartAgent) -> None:
    """Re-protection (create_domain unset) on a host that holds no such domain: refused,
    nothing created (a new empty domain would be copied over the secondary)."""
    a = agents("host-a")
    spec = colo_pb2.DomainSpec(domain="web", sim=colo_pb2.SimDomainSpec(pages=256, seed=1))
    req = start_primary("web", create=False, spec=spec, generation=2, epoch=5)
    with pytest.raises(grpc.RpcError) as err:
        a.stub.StartPrimary(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refusing to create" in (err.value.details() or "")
    assert refusal(lambda: a.stub.StartPrimary(req, timeout=10))[1] == "NO_GUEST"
    status = a.stub.GetStatus(colo_pb2.GetStatusRequest(), timeout=5)
    assert not status.domains
