"""The checkpoint driver against a stand-in for the primary's agent whose
Checkpoint call blocks until the test lets it answer: never two checkpoints
at once, requests during one coalesce into the next, epochs only rise, a
lost data connection stops checkpoints and reports the trouble; armed
epochs (docs/protocol.md) are fired by a second call, and recorded by what
started them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRegistry
from colo_plane.coordinator.checkpoints import CheckpointDriver
from colo_plane.coordinator.events import EventBus
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import CHECKPOINTING, PROTECTED, PairMachine, PairRecord
from colo_plane.coordinator.store import SqliteStore
from colo_plane.rpc import RpcError

REQUEST = colo_pb2.CHECKPOINT_TRIGGER_REQUEST
MANUAL = colo_pb2.CHECKPOINT_TRIGGER_MANUAL


class AbortedError(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.ABORTED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="data connection lost"
        )


class GatedPrimary:
    """Answers Checkpoint only when the test opens the gate, one call at a time."""

    def __init__(self) -> None:
        self.calls: list[colo_pb2.AgentCheckpointRequest] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Semaphore(0)
        self.fail_next = False

    async def checkpoint(
        self, req: colo_pb2.AgentCheckpointRequest, *, timeout: float
    ) -> colo_pb2.AgentCheckpointResponse:
        self.calls.append(req)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.acquire()
        finally:
            self.in_flight -= 1
        if self.fail_next:
            raise AbortedError()
        return colo_pb2.AgentCheckpointResponse(domain=req.domain, generation=req.generation, epoch=req.epoch)


async def _setup(
    tmp: Path, primary: object | None = None, *, armed: bool = False
) -> tuple[PairMachine, CheckpointDriver, PairRecord, GatedPrimary, list[str]]:
    machine = PairMachine(SqliteStore(tmp / "c.db"), EventBus())
    registry = AgentRegistry()
    stand_in = primary or GatedPrimary()
    registry.client = lambda host: stand_in  # type: ignore[assignment,method-assign,return-value]
    trouble: list[str] = []
    driver = CheckpointDriver(
        machine,
        registry,
        Settings(checkpoint_interval=3600.0, arm_checkpoints=armed),
        lambda rec, generation, why: trouble.append(why),
    )
    rec = machine.create(colo_pb2.DomainSpec(domain="vm1", sim=colo_pb2.SimDomainSpec(pages=64)), "a")
    machine.start_syncing(rec, "b", b"s" * 32, why="test")
    machine.first_boot_done(rec, colo_pb2.StartPrimaryResponse(epoch=1))
    driver.start(rec)
    return machine, driver, rec, stand_in, trouble  # type: ignore[return-value]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _coalescing(tmp: Path) -> None:
    _, driver, rec, primary, _ = await _setup(tmp)
    epoch, coalesced, _ = driver.want("vm1", REQUEST)
    assert (epoch, coalesced) == (2, False)
    await _settle()
    assert rec.state == CHECKPOINTING and [c.epoch for c in primary.calls] == [2]
    # Three more while epoch 2 is in flight: one next checkpoint serves them all.
    answers = [driver.want("vm1", REQUEST) for _ in range(2)]
    _, _, manual = driver.want("vm1", MANUAL, wait=True)
    assert [a[:2] for a in answers] == [(3, False), (3, True)]
    await _settle()
    assert len(primary.calls) == 1 and primary.most_in_flight == 1
    primary.gate.release()  # epoch 2 answers
    await _settle()
    assert [c.epoch for c in primary.calls] == [2, 3] and primary.most_in_flight == 1
    assert primary.calls[1].trigger == REQUEST  # the next one carries its first request's trigger
    primary.gate.release()
    assert manual is not None
    done = await asyncio.wait_for(manual, 1)
    assert done.epoch == 3 and rec.state == PROTECTED and rec.pair.epoch == 3
    assert rec.pair.checkpoint_counts.request == 2 and rec.pair.checkpoint_counts.manual == 0
    await driver.close()


async def _link_lost(tmp: Path) -> None:
    _, driver, rec, primary, trouble = await _setup(tmp)
    primary.fail_next = True
    _, _, result = driver.want("vm1", MANUAL, wait=True)
    await _settle()
    primary.gate.release()
    assert result is not None
    with pytest.raises(Exception, match="ABORTED"):
        await asyncio.wait_for(result, 1)
    assert rec.state == PROTECTED and rec.link_broken and rec.pair.checkpoint_counts.failed == 1
    assert trouble and "data connection lost" in trouble[0]
    # No checkpoint is issued over a broken link.
    driver.want("vm1", REQUEST)
    await _settle()
    assert len(primary.calls) == 1
    await driver.close()


def test_never_two_at_once_and_requests_coalesce(tmp_path: Path) -> None:
    asyncio.run(_coalescing(tmp_path))


def test_a_lost_data_connection_stops_checkpoints_and_reports(tmp_path: Path) -> None:
    asyncio.run(_link_lost(tmp_path))


class ArmedPrimary:
    """An agent with armed checkpoints: an armed call waits until it is
    fired (a second call for its epoch) or the test starts it with a
    trigger; overtaken=True plays the race where the second call reaches the
    agent first and runs the epoch, and the armed call is refused."""

    def __init__(self, *, overtaken: bool = False) -> None:
        self.calls: list[colo_pb2.AgentCheckpointRequest] = []
        self.start: asyncio.Future[colo_pb2.CheckpointTrigger] | None = None
        self.overtaken = overtaken

    def _answer(self, req: colo_pb2.AgentCheckpointRequest, trigger: int) -> colo_pb2.AgentCheckpointResponse:
        return colo_pb2.AgentCheckpointResponse(
            domain=req.domain,
            generation=req.generation,
            epoch=req.epoch,
            trigger=trigger,  # type: ignore[arg-type]
            request_seq=41 if trigger == REQUEST else 0,
            stats=colo_pb2.CheckpointStats(duration_ns=300_000),
        )

    async def checkpoint(
        self, req: colo_pb2.AgentCheckpointRequest, *, timeout: float
    ) -> colo_pb2.AgentCheckpointResponse:
        self.calls.append(req)
        if req.HasField("arm"):
            self.start = asyncio.get_running_loop().create_future()
            trigger = await self.start
            if self.overtaken:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details=f"epoch {req.epoch} is not above the last epoch {req.epoch}",
                )
            return self._answer(req, trigger)
        assert self.start is not None
        if not self.start.done():
            self.start.set_result(MANUAL)
        return self._answer(req, req.trigger)


async def _armed_by_divergence(tmp: Path) -> None:
    machine, driver, rec, _, trouble = await _setup(tmp, ArmedPrimary(), armed=True)
    primary: ArmedPrimary = driver.registry.client("a")  # type: ignore[assignment]
    await _settle()
    (armed,) = primary.calls
    assert armed.epoch == 2 and 3590 < armed.arm.seconds <= 3600
    assert rec.state == PROTECTED and rec.pair.pending_epoch == 2  # armed, not in flight
    assert primary.start is not None
    primary.start.set_result(REQUEST)  # the proxy held a reply
    await _settle()
    assert rec.pair.epoch == 2 and rec.pair.checkpoint_counts.request == 1 and rec.pair.divergences == 1
    kinds = [(e.kind, e.epoch) for e in machine.bus.recent(domain="vm1", limit=20)]
    assert [k for k in kinds if k[1] == 2 and k[0] != colo_pb2.EVENT_KIND_STATE_CHANGED] == [
        (colo_pb2.EVENT_KIND_CHECKPOINT_REQUESTED, 2),
        (colo_pb2.EVENT_KIND_CHECKPOINT_ISSUED, 2),
        (colo_pb2.EVENT_KIND_CHECKPOINT_COMPLETED, 2),
    ]
    assert [c.epoch for c in primary.calls] == [2, 3]  # and the next epoch is armed at once
    assert not trouble
    await driver.close()


async def _armed_fired(tmp: Path, overtaken: bool) -> None:
    _, driver, rec, _, trouble = await _setup(tmp, ArmedPrimary(overtaken=overtaken), armed=True)
    primary: ArmedPrimary = driver.registry.client("a")  # type: ignore[assignment]
    await _settle()
    epoch, coalesced, waiter = driver.want("vm1", MANUAL, wait=True)
    assert (epoch, coalesced) == (2, False)
    assert waiter is not None
    done = await asyncio.wait_for(waiter, 1)
    fire = primary.calls[1]
    assert fire.epoch == 2 and not fire.HasField("arm") and fire.trigger == MANUAL
    assert done.epoch == 2 and rec.pair.epoch == 2 and rec.pair.checkpoint_counts.manual == 1
    assert rec.pair.checkpoint_counts.failed == 0 and not rec.link_broken and not trouble
    await _settle()
    assert primary.calls[2].epoch == 3 and primary.calls[2].HasField("arm")
    await driver.close()


def test_an_armed_epoch_started_by_a_held_reply_is_recorded_as_requested(tmp_path: Path) -> None:
    asyncio.run(_armed_by_divergence(tmp_path))


@pytest.mark.parametrize("overtaken", [False, True], ids=["in-order", "second-call-first"])
def test_a_wanted_checkpoint_fires_the_armed_epoch(tmp_path: Path, overtaken: bool) -> None:
    asyncio.run(_armed_fired(tmp_path, overtaken))


class RefusingPrimary(GatedPrimary):
    """Fails every Checkpoint with a status whose ErrorInfo says `reason`, and
    whatever message text the test chose."""

    def __init__(self, code: grpc.StatusCode, reason: int, text: str) -> None:
        super().__init__()
        self.error = RpcError(code, text, reason=reason)  # type: ignore[arg-type]

    async def checkpoint(
        self, req: colo_pb2.AgentCheckpointRequest, *, timeout: float
    ) -> colo_pb2.AgentCheckpointResponse:
        self.calls.append(req)
        trailers = grpc.aio.Metadata(*self.error.trailers())
        raise grpc.aio.AioRpcError(self.error.code, grpc.aio.Metadata(), trailers, details=self.error.message)


@pytest.mark.parametrize(
    ("code", "reason", "text", "broken"),
    [
        # The agent's own words for busy, and words that say nothing of it: the reason decides.
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            colo_pb2.ERROR_REASON_BUSY,
            "vm1 is busy with a command",
            False,
        ),
        (grpc.StatusCode.FAILED_PRECONDITION, colo_pb2.ERROR_REASON_BUSY, "je suis occupé", False),
        # A broken epoch whose text happens to say "busy": still a lost link.
        (grpc.StatusCode.ABORTED, colo_pb2.ERROR_REASON_EPOCH_FAILED, "the line was busy, then cut", True),
        (grpc.StatusCode.ABORTED, colo_pb2.ERROR_REASON_EPOCH_FAILED, "epoch 2 failed", True),
    ],
    ids=["busy", "busy-other-words", "failed-says-busy", "failed"],
)
def test_retry_decisions_read_the_reason_not_the_message(
    tmp_path: Path, code: grpc.StatusCode, reason: int, text: str, broken: bool
) -> None:
    async def go() -> None:
        _, driver, rec, _, trouble = await _setup(tmp_path, RefusingPrimary(code, reason, text))
        _, _, result = driver.want("vm1", MANUAL, wait=True)
        assert result is not None
        with pytest.raises(Exception, match=code.name):
            await asyncio.wait_for(result, 1)
        assert bool(rec.link_broken) is broken
        assert bool(trouble) is broken
        await driver.close()

    asyncio.run(go())


def test_a_missing_guest_goes_to_the_copy_check_at_once(tmp_path: Path) -> None:
    """DOMAIN_NOT_HELD / DOMAIN_GONE: the trouble handler (roles' copy check) hears at
    the first failure, whatever the text says, without waiting for three."""

    async def go() -> None:
        for reason in (colo_pb2.ERROR_REASON_DOMAIN_NOT_HELD, colo_pb2.ERROR_REASON_DOMAIN_GONE):
            primary = RefusingPrimary(grpc.StatusCode.FAILED_PRECONDITION, reason, "?")
            (tmp_path / str(reason)).mkdir()
            _, driver, _, _, trouble = await _setup(tmp_path / str(reason), primary)
            _, _, result = driver.want("vm1", MANUAL, wait=True)
            assert result is not None
            with pytest.raises(Exception, match="FAILED_PRECONDITION"):
                await asyncio.wait_for(result, 1)
            assert len(trouble) == 1, reason
            await driver.close()

    asyncio.run(go())
