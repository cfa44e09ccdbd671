"""Armed checkpoints at the coordinator (coordinator/arming.py, docs/protocol.md)
against a stand-in for the primary's agent: an armed epoch is recorded by
what started it, a wanted checkpoint fires it with a second call, and a
divergence is counted and recorded (CHECKPOINT_REQUESTED) once, whether the
primary started the epoch or asked (RequestCheckpoint, the fallback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from driverkit import MANUAL, REQUEST, settle, setup

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.arming import ARM_LOST_AFTER
from colo_plane.coordinator.statemachine import PROTECTED


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
    machine, driver, rec, _, trouble = await setup(tmp, ArmedPrimary(), armed=True)
    primary: ArmedPrimary = driver.registry.client("a")  # type: ignore[assignment]
    await settle()
    (armed,) = primary.calls
    assert armed.epoch == 2 and 3590 < armed.arm.seconds <= 3600
    assert rec.state == PROTECTED and rec.pair.pending_epoch == 2  # armed, not in flight
    assert primary.start is not None
    primary.start.set_result(REQUEST)  # the proxy held a reply
    await settle()
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
    _, driver, rec, _, trouble = await setup(tmp, ArmedPrimary(overtaken=overtaken), armed=True)
    primary: ArmedPrimary = driver.registry.client("a")  # type: ignore[assignment]
    await settle()
    epoch, coalesced, waiter = driver.want("vm1", MANUAL, wait=True)
    assert (epoch, coalesced) == (2, False)
    assert waiter is not None
    done = await asyncio.wait_for(waiter, 1)
    fire = primary.calls[1]
    assert fire.epoch == 2 and not fire.HasField("arm") and fire.trigger == MANUAL
    assert done.epoch == 2 and rec.pair.epoch == 2 and rec.pair.checkpoint_counts.manual == 1
    assert rec.pair.checkpoint_counts.failed == 0 and not rec.link_broken and not trouble
    await settle()
    assert primary.calls[2].epoch == 3 and primary.calls[2].HasField("arm")
    await driver.close()


def test_an_armed_epoch_started_by_a_held_reply_is_recorded_as_requested(tmp_path: Path) -> None:
    asyncio.run(_armed_by_divergence(tmp_path))


@pytest.mark.parametrize("overtaken", [False, True], ids=["in-order", "second-call-first"])
def test_a_wanted_checkpoint_fires_the_armed_epoch(tmp_path: Path, overtaken: bool) -> None:
    asyncio.run(_armed_fired(tmp_path, overtaken))


async def _asked_while_armed(tmp: Path, late: bool) -> None:
    """The fallback: a RequestCheckpoint fires the armed epoch; one divergence
    on the record.  Asked long after the arm, the primary never got it:
    its host is suspected (the failure detector's one-way partition signal)."""
    machine, driver, rec, _, trouble = await setup(tmp, ArmedPrimary(), armed=True)
    primary: ArmedPrimary = driver.registry.client("a")  # type: ignore[assignment]
    suspected: list[str] = []
    driver.on_unreachable = suspected.append
    await settle()
    if late:
        await asyncio.sleep(ARM_LOST_AFTER + 0.05)
    req = colo_pb2.RequestCheckpointRequest(
        domain="vm1",
        generation=rec.generation,
        host_id="a",
        request_seq=7,
        reason=colo_pb2.CHECKPOINT_REQUEST_REASON_REPLY_TIMEOUT,
    )
    assert driver.arming.requested(rec, req) == (2, False)
    assert driver.arming.requested(rec, req) == (2, True)  # fired already: it serves this one too
    await settle()
    assert suspected == (["a"] if late else [])
    assert [(c.epoch, c.HasField("arm"), c.trigger) for c in primary.calls[:2]] == [
        (2, True, colo_pb2.CHECKPOINT_TRIGGER_TIMER),
        (2, False, REQUEST),
    ]
    assert rec.pair.epoch == 2 and rec.pair.checkpoint_counts.request == 1
    requested = [
        e
        for e in machine.bus.recent(domain="vm1", limit=50)
        if e.kind == colo_pb2.EVENT_KIND_CHECKPOINT_REQUESTED
    ]
    assert [(e.epoch, e.request_seq, e.host_id) for e in requested] == [(2, 7, "a"), (2, 7, "a")]
    assert rec.pair.divergences == 2  # each request counted once; the fired epoch adds none
    assert not trouble
    await driver.close()


@pytest.mark.parametrize("late", [False, True], ids=["soon", "long-after-the-arm"])
def test_a_request_fires_the_armed_epoch_and_is_recorded_once(tmp_path: Path, late: bool) -> None:
    asyncio.run(_asked_while_armed(tmp_path, late))
