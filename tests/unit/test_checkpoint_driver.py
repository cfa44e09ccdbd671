"""The checkpoint driver against a stand-in for the primary's agent whose
Checkpoint call blocks until the test lets it answer: never two checkpoints
at once, requests during one coalesce into the next, epochs only rise, a
lost data connection stops checkpoints and reports the trouble (armed
epochs: test_coordinator_arming.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from driverkit import MANUAL, REQUEST, GatedPrimary, settle, setup

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.statemachine import CHECKPOINTING, PROTECTED
from colo_plane.rpc import RpcError


async def _coalescing(tmp: Path) -> None:
    _, driver, rec, primary, _ = await setup(tmp)
    epoch, coalesced, _ = driver.want("vm1", REQUEST)
    assert (epoch, coalesced) == (2, False)
    await settle()
    assert rec.state == CHECKPOINTING and [c.epoch for c in primary.calls] == [2]
    # Three more while epoch 2 is in flight: one next checkpoint serves them all.
    answers = [driver.want("vm1", REQUEST) for _ in range(2)]
    _, _, manual = driver.want("vm1", MANUAL, wait=True)
    assert [a[:2] for a in answers] == [(3, False), (3, True)]
    await settle()
    assert len(primary.calls) == 1 and primary.most_in_flight == 1
    primary.gate.release()  # epoch 2 answers
    await settle()
    assert [c.epoch for c in primary.calls] == [2, 3] and primary.most_in_flight == 1
    assert primary.calls[1].trigger == REQUEST  # the next one carries its first request's trigger
    primary.gate.release()
    assert manual is not None
    done = await asyncio.wait_for(manual, 1)
    assert done.epoch == 3 and rec.state == PROTECTED and rec.pair.epoch == 3
    assert rec.pair.checkpoint_counts.request == 2 and rec.pair.checkpoint_counts.manual == 0
    await driver.close()


async def _link_lost(tmp: Path) -> None:
    _, driver, rec, primary, trouble = await setup(tmp)
    primary.fail_next = True
    _, _, result = driver.want("vm1", MANUAL, wait=True)
    await settle()
    primary.gate.release()
    assert result is not None
    with pytest.raises(Exception, match="ABORTED"):
        await asyncio.wait_for(result, 1)
    assert rec.state == PROTECTED and rec.link_broken and rec.pair.checkpoint_counts.failed == 1
    assert trouble and "data connection lost" in trouble[0]
    # No checkpoint is issued over a broken link.
    driver.want("vm1", REQUEST)
    await settle()
    assert len(primary.calls) == 1
    await driver.close()


def test_never_two_at_once_and_requests_coalesce(tmp_path: Path) -> None:
    asyncio.run(_coalescing(tmp_path))


def test_a_lost_data_connection_stops_checkpoints_and_reports(tmp_path: Path) -> None:
    asyncio.run(_link_lost(tmp_path))


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
        _, driver, rec, _, trouble = await setup(tmp_path, RefusingPrimary(code, reason, text))
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
            _, driver, _, _, trouble = await setup(tmp_path / str(reason), primary)
            _, _, result = driver.want("vm1", MANUAL, wait=True)
            assert result is not None
            with pytest.raises(Exception, match="FAILED_PRECONDITION"):
                await asyncio.wait_for(result, 1)
            assert len(trouble) == 1, reason
            await driver.close()

    asyncio.run(go())
