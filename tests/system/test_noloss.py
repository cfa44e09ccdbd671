"""No client loses anything it was told: loadgen through the COLO proxy of a
protected domain whose replies diverge, the primary's host killed with
SIGKILL mid-run (once at a random moment, once during a checkpoint), the
clients following the pair to the promoted secondary."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from coordinated import loadgen_in_thread

from colo_plane import promtext
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.rpc import duration
from colo_plane.tools.localcluster import LocalCluster, Process

pytestmark = pytest.mark.system

HOSTS = ("host-a", "host-b", "host-c")


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.local = LocalCluster(workdir)
        self.coordinator = self.local.start_coordinator()
        self.agents: dict[str, Process] = {
            h: self.local.start_agent(h, self.coordinator.grpc, "--verify", "--label", f"zone={h}")
            for h in HOSTS
        }
        self.channel = grpc.insecure_channel(self.coordinator.grpc)
        self.stub = colo_pb2_grpc.CoordinatorStub(self.channel)
        deadline = time.monotonic() + 15
        alive = colo_pb2.ListAgentsRequest(alive_only=True)
        while len(self.stub.ListAgents(alive, timeout=5).agents) < len(HOSTS):
            assert time.monotonic() < deadline, "agents did not register"
            time.sleep(0.05)

    def pair(self, domain: str) -> colo_pb2.Pair:
        return self.stub.GetPair(colo_pb2.GetPairRequest(domain=domain), timeout=5).pair

    def protect(self, domain: str, *, divergence: float, interval: float = 1.0) -> colo_pb2.Pair:
        spec = colo_pb2.DomainSpec(
            domain=domain,
            verify=True,
            checkpoint_interval=duration(interval),
            sim=colo_pb2.SimDomainSpec(
                pages=4096, dirty_rate=5_000, seed=3, divergence_probability=divergence
            ),
        )
        req = colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a", wait=True)
        return self.stub.ProtectDomain(req, timeout=60).pair

    def close(self) -> None:
        self.channel.close()
        self.local.stop_all()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.close()


def _kill_during_checkpoint(cluster: Cluster, domain: str) -> str:
    """SIGKILL the primary's agent right after a checkpoint is issued to it."""
    stream = cluster.stub.WatchEvents(colo_pb2.WatchEventsRequest(domain=domain), timeout=30)
    for reply in stream:
        if reply.event.kind == colo_pb2.EVENT_KIND_CHECKPOINT_ISSUED:
            victim = cluster.pair(domain).primary_host
            cluster.agents[victim].kill()
            stream.cancel()
            return victim
    raise AssertionError("no checkpoint was issued")


def _history(cluster: Cluster, domain: str) -> list[colo_pb2.Event]:
    """The coordinator's event log of domain (WatchEvents replays it, then follows until the deadline)."""
    events: list[colo_pb2.Event] = []
    stream = cluster.stub.WatchEvents(colo_pb2.WatchEventsRequest(domain=domain, history=100_000), timeout=3)
    try:
        events.extend(reply.event for reply in stream)
    except grpc.RpcError as end:
        if end.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # the normal end: our deadline
            raise
    return events


@pytest.mark.parametrize("moment", ["any", "during-checkpoint"])
def test_no_acknowledged_write_is_lost_across_failover(cluster: Cluster, moment: str) -> None:
    pair = cluster.protect("web", divergence=0.05)
    assert pair.state == colo_pb2.PAIR_STATE_PROTECTED
    assert pair.service_endpoint
    thread, out = loadgen_in_thread(cluster.coordinator.grpc, "web", seconds=8.0)
    time.sleep(2.5)
    if moment == "any":
        victim = cluster.pair("web").primary_host
        cluster.agents[victim].kill()
    else:
        victim = _kill_during_checkpoint(cluster, "web")
    thread.join(timeout=120)
    (report,) = out
    assert report.acknowledged_writes > 500
    assert report.acknowledged_writes_lost == 0, report
    assert report.reads_of_values_never_written == 0, report
    assert report.reconnects >= 1  # the clients did follow the failover
    after = cluster.pair("web")
    assert after.primary_host != victim
    assert after.generation > pair.generation


def test_held_replies_are_released_only_after_their_checkpoint_resumed(cluster: Cluster) -> None:
    """From the primary's log and the coordinator's event log: every reply
    held for a divergence leaves after SECONDARY_RESUMED of the epoch that
    released it, never before (one machine: one CLOCK_MONOTONIC)."""
    cluster.protect("web", divergence=0.10, interval=5.0)
    thread, out = loadgen_in_thread(cluster.coordinator.grpc, "web", seconds=3.0)
    thread.join(timeout=60)
    assert out[0].acknowledged_writes_lost == 0
    resumed = {
        ev.epoch: (ev.monotonic_ns, ev.stats.last_seq)
        for ev in _history(cluster, "web")
        if ev.kind == colo_pb2.EVENT_KIND_SYNC_POINT
        and ev.control_id == colo_pb2.CONTROL_ID_SECONDARY_RESUMED
    }
    log = cluster.agents["host-a"].log.read_text()
    held = {
        int(s): int(t)
        for line in re.findall(r"holding replies (.*)", log)
        for s, t in re.findall(r"(\d+) \(\w+\) t=(\d+)", line)
    }
    released = [
        (int(s), int(e), int(t))
        for line in re.findall(r"released held replies (.*)", log)
        for e, t, seqs in re.findall(r"after epoch=(\d+) resumed t=(\d+): ([\d, ]+)", line)
        for s in seqs.split(", ")
    ]
    assert len(released) >= 5, "10 % divergence held and released replies"
    for seq, epoch, t_release in released:
        t_resumed, covered = resumed[epoch]
        assert t_resumed < t_release, (seq, epoch)  # never before SECONDARY_RESUMED
        assert covered >= seq, (seq, epoch)  # and by a checkpoint whose state holds the request
        assert held[seq] < t_release


@pytest.mark.parametrize(("divergence", "expect_requests"), [(0.0, False), (0.10, True)])
def test_divergence_drives_checkpoints(cluster: Cluster, divergence: float, expect_requests: bool) -> None:
    """Probability 0: only timer checkpoints; 10 %: the proxy's requests drive
    checkpoints too (from the coordinator's metrics)."""
    cluster.protect("web", divergence=divergence, interval=0.5)
    thread, out = loadgen_in_thread(cluster.coordinator.grpc, "web", seconds=3.0)
    thread.join(timeout=60)
    assert out[0].acknowledged_writes_lost == 0
    text = promtext.scrape(cluster.coordinator.info["metrics"])
    timer = promtext.total([text], "colo_checkpoints_total", trigger="timer")
    requested = promtext.total([text], "colo_checkpoints_total", trigger="request")
    if expect_requests:
        assert requested >= 10  # and these keep the timer from firing: it is a maximum interval
    else:
        assert requested == 0
        assert timer >= 3  # 3 s at one every 0.5 s
