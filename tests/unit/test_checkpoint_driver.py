"""The checkpoint driver against a stand-in for the primary's agent whose
Checkpoint call blocks until the test lets it answer: never two checkpoints
at once, requests during one coalesce into the next, epochs only rise, a
lost data connection stops checkpoints and reports the trouble."""

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


async def _setup(tmp: Path) -> tuple[PairMachine, CheckpointDriver, PairRecord, GatedPrimary, list[str]]:
    machine = PairMachine(SqliteStore(tmp / "c.db"), EventBus())
    registry = AgentRegistry()
    primary = GatedPrimary()
    registry.client = lambda host: primary  # type: ignore[assignment,method-assign,return-value]
    trouble: list[str] = []
    driver = CheckpointDriver(
        machine,
        registry,
        Settings(checkpoint_interval=3600.0),
        lambda rec, generation, why: trouble.append(why),
    )
    rec = machine.create(colo_pb2.DomainSpec(domain="vm1", sim=colo_pb2.SimDomainSpec(pages=64)), "a")
    machine.start_syncing(rec, "b", b"s" * 32, why="test")
    machine.first_boot_done(rec, colo_pb2.StartPrimaryResponse(epoch=1))
    driver.start(rec)
    return machine, driver, rec, primary, trouble


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
