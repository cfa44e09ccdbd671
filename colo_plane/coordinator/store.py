"""The coordinator's durable state behind a small interface: pairs (with
their generation and epoch ceiling) and agents.  SQLite (WAL) is the
embedded implementation; an etcd one can follow behind the same Store."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from colo_plane import metrics
from colo_plane._proto import colo_pb2

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- One row per pair, kept after STOPPED so the generation never goes back.
-- The indexed columns mirror the record (a colo.v1.Pair) for queries.
CREATE TABLE IF NOT EXISTS pairs (
    domain         TEXT PRIMARY KEY,
    generation     INTEGER NOT NULL,
    epoch          INTEGER NOT NULL,
    epoch_ceiling  INTEGER NOT NULL,   -- no epoch above this was handed out
    state          INTEGER NOT NULL,
    primary_host   TEXT NOT NULL,
    secondary_host TEXT NOT NULL,
    record         BLOB NOT NULL,      -- colo.v1.Pair, serialized
    updated_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pairs_primary ON pairs (primary_host);
CREATE INDEX IF NOT EXISTS pairs_secondary ON pairs (secondary_host);
CREATE TABLE IF NOT EXISTS agents (
    host_id     TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    draining    INTEGER NOT NULL,
    record      BLOB NOT NULL,         -- colo.v1.AgentInfo, serialized (roles left out)
    updated_at  REAL NOT NULL
);
"""

# A pair is written only if its generation does not go back: a late write
# from a superseded decision cannot undo a newer one.
UPSERT_PAIR = """
INSERT INTO pairs (domain, generation, epoch, epoch_ceiling, state, primary_host, secondary_host, record,
                   updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (domain) DO UPDATE SET
    generation = excluded.generation, epoch = excluded.epoch,
    epoch_ceiling = max(pairs.epoch_ceiling, excluded.epoch_ceiling), state = excluded.state,
    primary_host = excluded.primary_host, secondary_host = excluded.secondary_host,
    record = excluded.record, updated_at = excluded.updated_at
WHERE excluded.generation >= pairs.generation
"""

UPSERT_AGENT = """
INSERT INTO agents (host_id, incarnation, draining, record, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (host_id) DO UPDATE SET
    incarnation = excluded.incarnation, draining = excluded.draining, record = excluded.record,
    updated_at = excluded.updated_at
"""


@dataclass(frozen=True)
class StoredPair:
    pair: colo_pb2.Pair
    epoch_ceiling: int


class StoreError(Exception):
    """The store refused or failed a write."""


class Store(Protocol):
    """What the coordinator needs from durable storage."""

    def load_pairs(self) -> list[StoredPair]: ...

    def load_agents(self) -> list[colo_pb2.AgentInfo]: ...

    def save_pairs(self, rows: list[StoredPair]) -> None:
        """Writes every row in one transaction; generations never go back."""
        ...

    def save_agent(self, info: colo_pb2.AgentInfo) -> None: ...

    def close(self) -> None: ...


class SqliteStore:
    """Store in one SQLite file, WAL mode (readers never block the writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a commit survives a crash of this process (kill -9),
        # only a power loss can drop the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {row[0]}, this coordinator knows {SCHEMA_VERSION}"
            )

    def load_pairs(self) -> list[StoredPair]:
        out = []
        for record, ceiling in self._db.execute("SELECT record, epoch_ceiling FROM pairs ORDER BY domain"):
            pair = colo_pb2.Pair()
            pair.ParseFromString(record)
            out.append(StoredPair(pair, ceiling))
        return out

    def load_agents(self) -> list[colo_pb2.AgentInfo]:
        out = []
        for (record,) in self._db.execute("SELECT record FROM agents ORDER BY host_id"):
            info = colo_pb2.AgentInfo()
            info.ParseFromString(record)
            out.append(info)
        return out

    def generation(self, domain: str) -> int:
        row = self._db.execute("SELECT generation FROM pairs WHERE domain = ?", (domain,)).fetchone()
        return int(row[0]) if row else 0

    def save_pairs(self, rows: list[StoredPair]) -> None:
        if not rows:
            return
        now = time.time()
        params = [
            (
                r.pair.domain,
                r.pair.generation,
                r.pair.epoch,
                r.epoch_ceiling,
                r.pair.state,
                r.pair.primary_host,
                r.pair.secondary_host,
                r.pair.SerializeToString(),
                now,
            )
            for r in rows
        ]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(UPSERT_PAIR, params)
            self._db.execute("COMMIT")
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            self._rollback()  # all or nothing: no half-written batch stays open
            metrics.STORE_ERRORS.labels("pairs").inc()
            raise StoreError(f"cannot write {len(rows)} pair(s) to {self.path}: {exc}") from exc

    def save_agent(self, info: colo_pb2.AgentInfo) -> None:
        stored = colo_pb2.AgentInfo()
        stored.CopyFrom(info)
        del stored.roles[:]  # derived from the pairs
        try:
            self._db.execute(
                UPSERT_AGENT,
                (info.host_id, info.incarnation, int(info.draining), stored.SerializeToString(), time.time()),
            )
        except sqlite3.Error as exc:
            metrics.STORE_ERRORS.labels("agent").inc()
            raise StoreError(f"cannot write agent {info.host_id} to {self.path}: {exc}") from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()
