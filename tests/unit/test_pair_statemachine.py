"""The pair state machine over a real SQLite store: named transitions,
generations, epochs, what is durable, and the events emitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.events import EventBus
from colo_plane.coordinator.statemachine import (
    CHECKPOINTING,
    EPOCH_BLOCK,
    FAILING_OVER,
    PROTECTED,
    STOPPED,
    SYNCING,
    UNPROTECTED,
    IllegalTransition,
    PairMachine,
)
from colo_plane.coordinator.store import SqliteStore


def _spec(domain: str = "vm1") -> colo_pb2.DomainSpec:
    return colo_pb2.DomainSpec(domain=domain, sim=colo_pb2.SimDomainSpec(pages=64))


def _stored(db: Path, domain: str = "vm1") -> colo_pb2.Pair:
    store = SqliteStore(db)
    try:
        return next(r.pair for r in store.load_pairs() if r.pair.domain == domain)
    finally:
        store.close()


def _kinds(bus: EventBus) -> list[int]:
    return [e.kind for e in bus.recent(limit=1000)]


def test_protect_checkpoint_failover_reprotect(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    bus = EventBus()
    m = PairMachine(SqliteStore(db), bus)
    rec = m.create(_spec(), "a")
    epoch = m.start_syncing(rec, "b", b"s" * 32, why="test")
    assert (rec.state, rec.generation, epoch) == (SYNCING, 1, 1)
    assert (
        _stored(db).state == SYNCING and _stored(db).generation == 1
    )  # durable before any agent hears of it
    assert colo_pb2.EVENT_KIND_SECONDARY_PLACED in _kinds(bus)

    m.first_boot_done(rec, colo_pb2.StartPrimaryResponse(domain="vm1", generation=1, epoch=1))
    assert rec.state == PROTECTED and rec.pair.checkpoint_counts.first_boot == 1

    epoch = m.allocate_epoch(rec)
    m.checkpoint_issued(rec, epoch, colo_pb2.CHECKPOINT_TRIGGER_TIMER)
    assert rec.state == CHECKPOINTING and rec.pair.pending_epoch == 2
    m.flush()
    assert _stored(db).state == PROTECTED and _stored(db).pending_epoch == 0  # in flight is never durable
    m.checkpoint_done(
        rec,
        colo_pb2.CHECKPOINT_TRIGGER_TIMER,
        colo_pb2.AgentCheckpointResponse(domain="vm1", generation=1, epoch=2),
    )
    assert rec.pair.epoch == 2 and rec.pair.checkpoint_counts.timer == 1 and rec.dirty
    m.flush()
    assert _stored(db).epoch == 2 and not rec.dirty

    with pytest.raises(IllegalTransition, match="promoted needs state FAILING_OVER"):
        m.promoted(rec, colo_pb2.FAILOVER_CAUSE_PRIMARY_LOST, colo_pb2.PromoteResponse())
    generation = m.begin_failover(rec, colo_pb2.FAILOVER_CAUSE_PRIMARY_LOST, message="a lost")
    assert generation == 2 and rec.state == FAILING_OVER and _stored(db).generation == 2
    m.promoted(
        rec,
        colo_pb2.FAILOVER_CAUSE_PRIMARY_LOST,
        colo_pb2.PromoteResponse(domain="vm1", generation=2, epoch=2, service_address="127.0.0.1:5"),
    )
    assert (
        rec.state == UNPROTECTED and rec.hosts() == ("b", "") and rec.pair.service_endpoint == "127.0.0.1:5"
    )
    assert rec.pair.failovers == 1

    m.start_syncing(rec, "c", b"t" * 32, why="re-protect")
    assert rec.generation == 3 and rec.hosts() == ("b", "c") and rec.pair.pending_epoch == 3
    kinds = _kinds(bus)
    assert kinds.count(colo_pb2.EVENT_KIND_FAILOVER_STARTED) == 1
    assert kinds.count(colo_pb2.EVENT_KIND_FAILOVER_COMPLETED) == 1
    changes = [
        (e.from_state, e.to_state)
        for e in bus.recent(limit=1000)
        if e.kind == colo_pb2.EVENT_KIND_STATE_CHANGED
    ]
    assert changes == [
        (colo_pb2.PAIR_STATE_UNSPECIFIED, SYNCING),
        (SYNCING, PROTECTED),
        (PROTECTED, CHECKPOINTING),
        (CHECKPOINTING, PROTECTED),
        (PROTECTED, FAILING_OVER),
        (FAILING_OVER, UNPROTECTED),
        (UNPROTECTED, SYNCING),
    ]
    seqs = [e.sequence for e in bus.recent(limit=1000)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_secondary_lost_and_stop_keep_the_generation_rising(tmp_path: Path) -> None:
    m = PairMachine(SqliteStore(tmp_path / "c.db"), EventBus())
    rec = m.create(_spec(), "a")
    m.start_syncing(rec, "b", b"s" * 32, why="test")
    m.first_boot_done(rec, colo_pb2.StartPrimaryResponse(epoch=1))
    assert m.secondary_dropped(rec, colo_pb2.FAILOVER_CAUSE_SECONDARY_LOST, message="b lost") == 2
    assert rec.state == UNPROTECTED and rec.hosts() == ("a", "")
    with pytest.raises(IllegalTransition):
        m.begin_failover(rec, colo_pb2.FAILOVER_CAUSE_PRIMARY_LOST, message="nothing to promote")
    m.stop(rec, "by request")
    assert rec.state == STOPPED
    # Protecting the same name again continues the generation.
    again = m.create(_spec(), "c")
    assert again is rec
    m.start_syncing(again, "a", b"u" * 32, why="again")
    assert again.generation == 3


def test_restart_allocates_above_every_epoch_handed_out(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    m = PairMachine(SqliteStore(db), EventBus())
    rec = m.create(_spec(), "a")
    m.start_syncing(rec, "b", b"s" * 32, why="test")
    m.first_boot_done(rec, colo_pb2.StartPrimaryResponse(epoch=1))
    handed = [m.allocate_epoch(rec) for _ in range(5)]
    assert handed == [2, 3, 4, 5, 6] and rec.epoch_ceiling == 1 + EPOCH_BLOCK
    # A crash: no flush of the checkpoint progress.  The new process starts above the ceiling.
    m2 = PairMachine(SqliteStore(db), EventBus())
    (loaded,) = m2.load()
    assert loaded.state == PROTECTED and loaded.generation == 1
    assert m2.allocate_epoch(loaded) > max(handed)
