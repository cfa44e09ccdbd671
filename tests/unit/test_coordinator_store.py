"""The coordinator's SQLite store, on a real file in tmp_path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.store import SqliteStore, StoredPair, StoreError


def _pair(domain: str, generation: int, state: int = colo_pb2.PAIR_STATE_PROTECTED) -> colo_pb2.Pair:
    return colo_pb2.Pair(
        domain=domain,
        generation=generation,
        epoch=7,
        state=state,
        primary_host="a",  # type: ignore[arg-type]
        secondary_host="b",
        spec=colo_pb2.DomainSpec(domain=domain, sim=colo_pb2.SimDomainSpec(pages=64)),
    )


def test_pairs_and_agents_survive_reopening(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = SqliteStore(db)
    store.save_pairs([StoredPair(_pair("vm1", 3), 1007), StoredPair(_pair("vm2", 1), 1001)])
    store.save_agent(
        colo_pb2.AgentInfo(
            host_id="a",
            incarnation="i1",
            grpc_address="127.0.0.1:1",
            draining=True,
            labels={"zone": "z1"},
            roles=[colo_pb2.HeldRole(domain="vm1", role=colo_pb2.ROLE_PRIMARY)],
        )
    )
    store.close()
    again = SqliteStore(db)
    pairs = {p.pair.domain: p for p in again.load_pairs()}
    assert pairs["vm1"].pair == _pair("vm1", 3) and pairs["vm1"].epoch_ceiling == 1007
    assert pairs["vm2"].pair.generation == 1
    (agent,) = again.load_agents()
    assert agent.host_id == "a" and agent.draining and agent.labels["zone"] == "z1"
    assert not agent.roles  # derived from the pairs, never stored
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again.close()


def test_generation_never_goes_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    store.save_pairs([StoredPair(_pair("vm1", 5), 100)])
    # A late write from a superseded decision changes nothing.
    store.save_pairs([StoredPair(_pair("vm1", 4, colo_pb2.PAIR_STATE_STOPPED), 50)])
    (row,) = store.load_pairs()
    assert row.pair.generation == 5 and row.pair.state == colo_pb2.PAIR_STATE_PROTECTED
    assert row.epoch_ceiling == 100
    # The same or a newer generation is written; the epoch ceiling only rises.
    store.save_pairs([StoredPair(_pair("vm1", 5, colo_pb2.PAIR_STATE_UNPROTECTED), 20)])
    (row,) = store.load_pairs()
    assert row.pair.state == colo_pb2.PAIR_STATE_UNPROTECTED and row.epoch_ceiling == 100
    assert store.generation("vm1") == 5 and store.generation("nope") == 0
    store.close()


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    store.save_pairs([StoredPair(_pair("vm1", 1), 10)])
    store.close()
    store = SqliteStore(tmp_path / "c.db")
    bad = colo_pb2.Pair(domain="vm2", generation=1)
    rows = [StoredPair(_pair("vm1", 2), 10), StoredPair(bad, 2**63)]  # the second overflows SQLite's INTEGER
    before = REGISTRY.get_sample_value("colo_store_errors_total", {"what": "pairs"}) or 0.0
    with pytest.raises(StoreError):
        store.save_pairs(rows)
    (row,) = store.load_pairs()
    assert row.pair.generation == 1  # nothing of the failed batch was written
    # and it shows, for the alert
    assert REGISTRY.get_sample_value("colo_store_errors_total", {"what": "pairs"}) == before + 1
    store.close()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(db)
