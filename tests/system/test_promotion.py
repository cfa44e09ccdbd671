"""Promotion right after a first boot: "promoted (runs from epoch 0)" was
logged 3 ms after a first boot finished at epoch 288.  The copy was whole
(the coordinator promotes only a PROTECTED pair, and the first boot's
answer comes after SECONDARY_READY): the epoch was read after the
replication thread's record was dropped.  And a secondary whose first
boot never completed holds no copy: promoting it is refused."""

from __future__ import annotations

import grpc
import pytest
from cluster import StartAgent, protect, sim_spec

from colo_plane._proto import colo_pb2

pytestmark = pytest.mark.system

EPOCH = 288


def test_a_promotion_right_after_the_first_boot_runs_from_its_epoch(agents: StartAgent) -> None:
    a, b = agents("host-a", "--verify"), agents("host-b", "--verify")
    boot = protect(a, b, sim_spec("vm1", pages=1024, rate=0), generation=1, epoch=EPOCH)
    reply = b.stub.Promote(colo_pb2.PromoteRequest(domain="vm1", generation=2, epoch=EPOCH), timeout=10)
    assert reply.epoch == EPOCH == boot.epoch
    status = b.stub.GetStatus(colo_pb2.GetStatusRequest(domain="vm1", include_hash=True), timeout=10)
    (promoted,) = status.domains
    assert promoted.role == colo_pb2.ROLE_PRIMARY and promoted.epoch == EPOCH
    # The guest is the first boot's copy (nothing dirties memory here).
    assert promoted.memory_hash == boot.verify.memory_hash


def test_a_secondary_without_a_whole_copy_is_not_promoted(agents: StartAgent) -> None:
    b = agents("host-b")
    spec = sim_spec("vm1", pages=1024, rate=0)
    b.stub.PrepareSecondary(
        colo_pb2.PrepareSecondaryRequest(
            domain="vm1",
            generation=1,
            epoch=1,
            spec=spec,
            pair_secret=b"s" * 32,
            peer_host_id="host-a",
            peer_data_address="127.0.0.1:1",
        ),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as err:
        b.stub.Promote(colo_pb2.PromoteRequest(domain="vm1", generation=2, epoch=1), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no whole copy" in (err.value.details() or "")
    (status,) = b.stub.GetStatus(colo_pb2.GetStatusRequest(domain="vm1"), timeout=10).domains
    assert status.role == colo_pb2.ROLE_SECONDARY  # nothing changed
