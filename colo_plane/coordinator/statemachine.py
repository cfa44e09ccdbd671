"""The pair state machine of docs/design.md §6.

    SYNCING -> PROTECTED <-> CHECKPOINTING
    PROTECTED | CHECKPOINTING -> FAILING_OVER -> UNPROTECTED      (secondary promoted)
    PROTECTED | CHECKPOINTING | SYNCING -> UNPROTECTED            (secondary lost or dropped)
    UNPROTECTED | STOPPED | new -> SYNCING                        (protect, re-protect)
    SYNCING | PROTECTED | CHECKPOINTING | FAILING_OVER | UNPROTECTED -> LOST  (no host holds the guest)
    any -> STOPPED                                                (UnprotectDomain)

Every transition is a named method here: it checks the state it leaves,
raises the generation where roles change, writes the store before any
agent hears of the change, logs, counts, and emits a WatchEvents event.
Nothing here talks to agents: roles.py and checkpoints.py do, and call
these transitions as the protocol moves on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2
from prometheus_client import Counter, Gauge

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.coordinator.events import EventBus
from colo_plane.coordinator.store import Store, StoredPair

log = logging.getLogger(__name__)

S = colo_pb2.PairState
SYNCING = colo_pb2.PAIR_STATE_SYNCING
PROTECTED = colo_pb2.PAIR_STATE_PROTECTED
CHECKPOINTING = colo_pb2.PAIR_STATE_CHECKPOINTING
FAILING_OVER = colo_pb2.PAIR_STATE_FAILING_OVER
UNPROTECTED = colo_pb2.PAIR_STATE_UNPROTECTED
STOPPED = colo_pb2.PAIR_STATE_STOPPED
LOST = colo_pb2.PAIR_STATE_LOST
NEW = colo_pb2.PAIR_STATE_UNSPECIFIED
ANY_STATE = (NEW, SYNCING, PROTECTED, CHECKPOINTING, FAILING_OVER, UNPROTECTED, STOPPED, LOST)

# The states each transition leaves from (docs/design.md §6).
FROM: dict[str, tuple[int, ...]] = {
    "start_syncing": (NEW, UNPROTECTED, STOPPED),
    "first_boot_done": (SYNCING,),
    "first_boot_failed": (SYNCING,),
    "checkpoint_issued": (PROTECTED,),
    "checkpoint_done": (CHECKPOINTING,),
    "checkpoint_failed": (CHECKPOINTING,),
    "begin_failover": (PROTECTED, CHECKPOINTING),
    "promoted": (FAILING_OVER,),
    "promotion_failed": (FAILING_OVER,),
    "secondary_dropped": (PROTECTED, CHECKPOINTING, SYNCING),
    "lost": (SYNCING, PROTECTED, CHECKPOINTING, FAILING_OVER, UNPROTECTED),
    "stop": ANY_STATE,
}

# Epochs are handed out from a persisted ceiling, EPOCH_BLOCK at a time: a
# checkpoint costs no synchronous write, and a restarted coordinator starts
# above every epoch it may have issued.
EPOCH_BLOCK = 1000


def state_name(state: int) -> str:
    return S.Name(state).removeprefix("PAIR_STATE_")


def trigger_name(trigger: int) -> str:
    return colo_pb2.CheckpointTrigger.Name(trigger).removeprefix("CHECKPOINT_TRIGGER_").lower()


def cause_name(cause: int) -> str:
    return colo_pb2.FailoverCause.Name(cause).removeprefix("FAILOVER_CAUSE_").lower()


def stamp(ts: timestamp_pb2.Timestamp) -> None:
    """Sets ts to now (cheaper than GetCurrentTime, which goes through datetime)."""
    ts.seconds, ts.nanos = divmod(time.time_ns(), 1_000_000_000)


# Metric children by label, looked up once (labels() costs a lock and a dict per call).
@functools.cache
def pairs_in(state: int) -> Gauge:
    return metrics.PAIRS.labels(state_name(state))


@functools.cache
def completed(trigger: int) -> Counter:
    return metrics.COORD_CHECKPOINTS.labels(trigger_name(trigger))


class IllegalTransition(Exception):
    """A transition asked of a pair in a state it cannot leave that way."""


@dataclass
class PairRecord:
    """One pair: its durable record (a colo.v1.Pair) and what the
    coordinator keeps in memory beside it."""

    pair: colo_pb2.Pair
    epoch_allocated: int = 0  # the highest epoch handed out
    epoch_ceiling: int = 0  # persisted: no epoch above it was handed out
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one role change at a time
    secret: bytes = b""  # this generation's data-connection secret; memory only, never stored
    failures: int = 0  # consecutive failed checkpoints: the pair's health
    link_broken: str = ""  # the data connection failed; no checkpoint until re-protected
    reprotect_after: float = 0.0  # time.monotonic() before which no re-protection is tried
    preferred_secondary: str = ""  # next secondary wanted (switchover: the old primary's host)
    unplaced: bool = False  # re-protection found no host (said once in last_error, not every retry)
    dirty: bool = False  # has progress not yet written (checkpoint figures)

    @property
    def domain(self) -> str:
        return self.pair.domain

    @property
    def generation(self) -> int:
        return self.pair.generation

    @property
    def state(self) -> int:
        return self.pair.state

    def hosts(self) -> tuple[str, str]:
        return self.pair.primary_host, self.pair.secondary_host


class PairMachine:
    """Every pair, and the transitions between their states."""

    def __init__(self, store: Store, bus: EventBus) -> None:
        self.store = store
        self.bus = bus
        self.pairs: dict[str, PairRecord] = {}

    # -- loading and persistence ---------------------------------------------------

    def load(self) -> list[PairRecord]:
        """Pairs from the store, in the state a restart leaves them."""
        for row in self.store.load_pairs():
            pair = row.pair
            rec = PairRecord(pair, epoch_allocated=row.epoch_ceiling, epoch_ceiling=row.epoch_ceiling)
            if pair.state == CHECKPOINTING:  # never stored, but be lenient
                pair.state = PROTECTED
            pair.pending_epoch = 0
            self.pairs[pair.domain] = rec
            pairs_in(pair.state).inc()
            metrics.pair_known(pair.domain)
            metrics.pair_state(pair.domain, "", state_name(pair.state))
        return list(self.pairs.values())

    def _row(self, rec: PairRecord) -> StoredPair:
        pair = rec.pair
        if pair.state == CHECKPOINTING or pair.pending_epoch:
            # A checkpoint in flight is not durable: stored as PROTECTED.
            stored = colo_pb2.Pair()
            stored.CopyFrom(pair)
            stored.state = PROTECTED if pair.state == CHECKPOINTING else pair.state
            stored.pending_epoch = 0
            pair = stored
        return StoredPair(pair, rec.epoch_ceiling)

    def persist(self, rec: PairRecord) -> None:
        """Writes the pair now (before any agent hears of the change)."""
        self.store.save_pairs([self._row(rec)])
        rec.dirty = False

    def flush(self) -> int:
        """Writes every pair with unwritten progress, in one transaction."""
        dirty = [rec for rec in self.pairs.values() if rec.dirty]
        if dirty:
            self.store.save_pairs([self._row(rec) for rec in dirty])
            for rec in dirty:
                rec.dirty = False
        return len(dirty)

    def allocate_epoch(self, rec: PairRecord) -> int:
        rec.epoch_allocated += 1
        if rec.epoch_allocated > rec.epoch_ceiling:
            rec.epoch_ceiling = rec.epoch_allocated + EPOCH_BLOCK
            self.persist(rec)
        return rec.epoch_allocated

    # -- events ------------------------------------------------------------------------

    def emit(self, rec: PairRecord | None, kind: int, **fields: object) -> colo_pb2.Event:
        event = colo_pb2.Event(kind=kind, **fields)  # type: ignore[arg-type]
        if rec is not None:
            event.domain = rec.domain
            event.generation = rec.generation
            if not event.epoch:
                event.epoch = rec.pair.epoch
        return self.bus.publish(event)

    def error(self, rec: PairRecord, message: str) -> None:
        """Records an error on the pair, for people (Pair.last_error) and watchers."""
        rec.pair.last_error = message
        stamp(rec.pair.last_error_time)
        rec.dirty = True
        log.warning("%s: %s", rec.domain, message)
        self.emit(rec, colo_pb2.EVENT_KIND_PAIR_ERROR, message=message)

    # -- the one place states change ------------------------------------------------

    def _move(
        self,
        rec: PairRecord,
        name: str,
        to: colo_pb2.PairState,
        *,
        cause: int = 0,
        message: str = "",
        durable: bool = True,
        level: int = logging.INFO,
    ) -> None:
        old = rec.pair.state
        self._require(rec, name)  # the states it leaves are FROM[name], the one table
        rec.pair.state = to
        if old != to:
            stamp(rec.pair.state_since)
            if old != NEW:
                pairs_in(old).dec()
            pairs_in(to).inc()
            metrics.pair_state(rec.domain, state_name(old) if old != NEW else "", state_name(to))
        if durable:
            self.persist(rec)
        else:
            rec.dirty = True
        log.log(
            level,
            "%s: %s: %s -> %s (generation %d%s)%s",
            rec.domain,
            name,
            state_name(old),
            state_name(to),
            rec.generation,
            f", {cause_name(cause)}" if cause else "",
            f": {message}" if message else "",
        )
        self.emit(
            rec,
            colo_pb2.EVENT_KIND_STATE_CHANGED,
            from_state=old,
            to_state=to,
            cause=cause,
            message=message or name,
        )

    def _require(self, rec: PairRecord, name: str) -> None:
        """Refuses a transition from a state it does not leave, before anything changes."""
        if rec.pair.state not in FROM[name]:
            raise IllegalTransition(
                f"{rec.domain}: {name} needs state {' or '.join(state_name(s) for s in FROM[name])}, "
                f"the pair is {state_name(rec.pair.state)}"
            )

    def _next_generation(self, rec: PairRecord) -> int:
        rec.pair.generation += 1
        return rec.pair.generation

    # -- transitions ------------------------------------------------------------------

    def create(self, spec: colo_pb2.DomainSpec, primary: str) -> PairRecord:
        """A new pair record (or the STOPPED one of the same name, whose
        generation and epochs carry on)."""
        rec = self.pairs.get(spec.domain)
        if rec is None:
            pair = colo_pb2.Pair(domain=spec.domain, state=NEW)
            stamp(pair.created_at)
            rec = PairRecord(pair)
            self.pairs[spec.domain] = rec
            metrics.pair_known(spec.domain)
        rec.pair.spec.CopyFrom(spec)
        rec.pair.primary_host = primary
        rec.pair.last_error = ""
        rec.pair.ClearField("last_error_time")
        rec.failures, rec.link_broken, rec.preferred_secondary = 0, "", ""
        return rec

    def start_syncing(self, rec: PairRecord, secondary: str, secret: bytes, *, why: str) -> int:
        """protect / re-protect: a new generation with a new secondary; the
        first boot's epoch is returned."""
        self._require(rec, "start_syncing")
        self._next_generation(rec)
        rec.secret = secret
        rec.pair.secondary_host = secondary
        rec.failures, rec.link_broken = 0, ""
        self.emit(rec, colo_pb2.EVENT_KIND_SECONDARY_PLACED, host_id=secondary, message=why)
        epoch = self.allocate_epoch(rec)
        rec.pair.pending_epoch = epoch
        self._move(
            rec,
            "start_syncing",
            SYNCING,
            message=f"first boot {rec.pair.primary_host} -> {secondary} at epoch {epoch}",
        )
        return epoch

    def first_boot_done(self, rec: PairRecord, resp: colo_pb2.StartPrimaryResponse) -> None:
        self._require(rec, "first_boot_done")
        pair = rec.pair
        pair.epoch = max(pair.epoch, resp.epoch)
        pair.pending_epoch = 0
        pair.checkpoint_counts.first_boot += 1
        pair.last_checkpoint.CopyFrom(resp.stats)
        stamp(pair.last_checkpoint_time)
        if resp.service_address:
            pair.service_endpoint = resp.service_address
        pair.last_error = ""
        self.emit(
            rec,
            colo_pb2.EVENT_KIND_CHECKPOINT_COMPLETED,
            epoch=resp.epoch,
            trigger=colo_pb2.CHECKPOINT_TRIGGER_FIRST_BOOT,
            stats=resp.stats,
            verify=resp.verify,
        )
        completed(colo_pb2.CHECKPOINT_TRIGGER_FIRST_BOOT).inc()
        self._move(
            rec,
            "first_boot_done",
            PROTECTED,
            message=f"{pair.secondary_host} holds a whole copy as of epoch {resp.epoch}",
        )

    def first_boot_failed(self, rec: PairRecord, message: str) -> None:
        """The new secondary never got a whole copy: the primary runs on alone."""
        self._require(rec, "first_boot_failed")
        rec.pair.secondary_host = ""
        rec.pair.pending_epoch = 0
        rec.pair.checkpoint_counts.failed += 1
        self.error(rec, message)
        self._move(rec, "first_boot_failed", UNPROTECTED, message=message, level=logging.WARNING)

    def checkpoint_armed(self, rec: PairRecord, epoch: int) -> None:
        """Epoch handed to the primary ahead: it starts at a held reply (no state change yet)."""
        self._require(rec, "checkpoint_issued")
        rec.pair.pending_epoch = epoch

    def checkpoint_issued(self, rec: PairRecord, epoch: int, trigger: int) -> None:
        self._require(rec, "checkpoint_issued")
        rec.pair.pending_epoch = epoch
        self.emit(rec, colo_pb2.EVENT_KIND_CHECKPOINT_ISSUED, epoch=epoch, trigger=trigger)
        self._move(
            rec,
            "checkpoint_issued",
            CHECKPOINTING,
            durable=False,
            level=logging.DEBUG,
            message=f"epoch {epoch} ({trigger_name(trigger)})",
        )

    def checkpoint_done(self, rec: PairRecord, trigger: int, resp: colo_pb2.AgentCheckpointResponse) -> None:
        self._require(rec, "checkpoint_done")
        pair = rec.pair
        pair.epoch = resp.epoch
        pair.pending_epoch = 0
        pair.last_checkpoint.CopyFrom(resp.stats)
        stamp(pair.last_checkpoint_time)
        counts = pair.checkpoint_counts
        if trigger == colo_pb2.CHECKPOINT_TRIGGER_REQUEST:
            counts.request += 1
        elif trigger == colo_pb2.CHECKPOINT_TRIGGER_TIMER:
            counts.timer += 1
        else:
            counts.manual += 1
        rec.failures = 0
        completed(trigger).inc()
        self.emit(
            rec,
            colo_pb2.EVENT_KIND_CHECKPOINT_COMPLETED,
            epoch=resp.epoch,
            trigger=trigger,
            stats=resp.stats,
            verify=resp.verify,
        )
        self._move(
            rec,
            "checkpoint_done",
            PROTECTED,
            durable=False,
            level=logging.DEBUG,
            message=f"epoch {resp.epoch}",
        )

    def checkpoint_failed(self, rec: PairRecord, epoch: int, trigger: int, message: str) -> None:
        self._require(rec, "checkpoint_failed")
        rec.pair.pending_epoch = 0
        rec.pair.checkpoint_counts.failed += 1
        rec.failures += 1
        metrics.COORD_CHECKPOINTS_FAILED.labels(trigger_name(trigger)).inc()
        self.emit(rec, colo_pb2.EVENT_KIND_CHECKPOINT_FAILED, epoch=epoch, trigger=trigger, message=message)
        self.error(rec, f"checkpoint {epoch} failed: {message}")
        self._move(
            rec,
            "checkpoint_failed",
            PROTECTED,
            durable=False,
            level=logging.WARNING,
            message=f"epoch {epoch}: {message}",
        )

    def begin_failover(self, rec: PairRecord, cause: int, *, message: str) -> int:
        """Fences the old primary: generation + 1 before the secondary is promoted."""
        self._require(rec, "begin_failover")
        generation = self._next_generation(rec)
        rec.pair.pending_epoch = 0
        rec.pair.failovers += 1
        metrics.FAILOVERS.labels(cause_name(cause), rec.domain).inc()
        self.emit(
            rec,
            colo_pb2.EVENT_KIND_FAILOVER_STARTED,
            cause=cause,
            host_id=rec.pair.secondary_host,
            message=message,
        )
        self._move(
            rec,
            "begin_failover",
            FAILING_OVER,
            cause=cause,
            message=message,
            level=logging.WARNING,
        )
        return generation

    def promoted(self, rec: PairRecord, cause: int, resp: colo_pb2.PromoteResponse) -> None:
        """The old secondary serves as primary, alone."""
        self._require(rec, "promoted")
        pair = rec.pair
        old_primary = pair.primary_host
        pair.primary_host, pair.secondary_host = pair.secondary_host, ""
        pair.service_endpoint = resp.service_address
        rec.link_broken, rec.failures = "", 0
        message = f"{pair.primary_host} promoted (runs from epoch {resp.epoch}); {old_primary} fenced"
        self._move(rec, "promoted", UNPROTECTED, cause=cause, message=message, level=logging.WARNING)
        self.emit(
            rec,
            colo_pb2.EVENT_KIND_FAILOVER_COMPLETED,
            cause=cause,
            host_id=pair.primary_host,
            message=message,
        )

    def promotion_failed(self, rec: PairRecord, cause: int, message: str) -> None:
        """Neither side can serve: the domain is down until someone acts."""
        self._require(rec, "promotion_failed")
        self.error(rec, message)
        rec.pair.secondary_host = ""
        self._move(
            rec,
            "promotion_failed",
            UNPROTECTED,
            cause=cause,
            message=message,
            level=logging.ERROR,
        )

    def secondary_dropped(self, rec: PairRecord, cause: int, *, message: str) -> int:
        """The secondary is lost (or dropped): generation + 1 fences it; the
        primary is told to run unprotected."""
        self._require(rec, "secondary_dropped")
        generation = self._next_generation(rec)
        lost = rec.pair.secondary_host
        rec.pair.secondary_host = ""
        rec.pair.pending_epoch = 0
        rec.pair.failovers += 1
        rec.link_broken, rec.failures = "", 0
        metrics.FAILOVERS.labels(cause_name(cause), rec.domain).inc()
        self.emit(
            rec,
            colo_pb2.EVENT_KIND_FAILOVER_STARTED,
            cause=cause,
            host_id=rec.pair.primary_host,
            message=f"secondary {lost} dropped: {message}",
        )
        self._move(
            rec,
            "secondary_dropped",
            UNPROTECTED,
            cause=cause,
            message=f"secondary {lost} dropped: {message}",
            level=logging.WARNING,
        )
        return generation

    def unprotected_confirmed(self, rec: PairRecord, cause: int) -> None:
        self.emit(
            rec,
            colo_pb2.EVENT_KIND_FAILOVER_COMPLETED,
            cause=cause,
            host_id=rec.pair.primary_host,
            message=f"{rec.pair.primary_host} runs unprotected",
        )

    def lost(self, rec: PairRecord, message: str) -> None:
        """No host holds the guest any more: nothing serves, nothing is re-protected;
        an operator decides (unprotect, then protect anew)."""
        self._require(rec, "lost")
        rec.pair.secondary_host = ""
        rec.pair.pending_epoch = 0
        rec.pair.service_endpoint = ""
        rec.secret = b""
        self.error(rec, f"PAIR LOST: {message}")
        self._move(rec, "lost", LOST, message=message, level=logging.ERROR)

    def stop(self, rec: PairRecord, message: str) -> None:
        self._require(rec, "stop")
        rec.pair.secondary_host = ""
        rec.pair.pending_epoch = 0
        rec.pair.service_endpoint = ""
        rec.secret = b""
        self._move(rec, "stop", STOPPED, message=message)
