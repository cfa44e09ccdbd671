"""Stand-ins for the checkpoint driver's unit tests (importable by name):
a primary whose Checkpoint call answers only when the test lets it, and a
driver over a real state machine and store with one PROTECTED pair."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.agents import AgentRegistry
from colo_plane.coordinator.checkpoints import CheckpointDriver
from colo_plane.coordinator.events import EventBus
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.statemachine import PairMachine, PairRecord
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


async def setup(
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


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
