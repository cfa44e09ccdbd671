"""A first boot's deadlines follow the guest's size, and protect --wait
follows the pair through the coordinator's own retries: a 2 GiB guest
exited 1 after 5.8 s (PrepareSecondary had the 5 s of any call) and was
PROTECTED 20 s later.  An in-process coordinator against stand-in agents."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from colo_plane._proto import colo_pb2
from colo_plane.coordinator import core as core_module
from colo_plane.coordinator.core import Coordinator
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.store import SqliteStore
from colo_plane.rpc import RpcError

GIB2 = 524_288  # pages


class FakeAgent:
    """Acks every command; PrepareSecondary fails the first `fail_prepares` times."""

    def __init__(self, host: str, log: list[tuple[str, float]], fail_prepares: int = 0) -> None:
        self.host = host
        self.log = log
        self.fail_prepares = fail_prepares

    async def prepare_secondary(self, req: Any, *, timeout: float) -> colo_pb2.PrepareSecondaryResponse:
        self.log.append(("prepare", timeout))
        if self.fail_prepares:
            self.fail_prepares -= 1
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "Deadline Exceeded",
            )
        return colo_pb2.PrepareSecondaryResponse(domain=req.domain, data_address="127.0.0.1:2")

    async def start_primary(self, req: Any, *, timeout: float) -> colo_pb2.StartPrimaryResponse:
        self.log.append(("start", timeout))
        return colo_pb2.StartPrimaryResponse(domain=req.domain, generation=req.generation, epoch=req.epoch)

    async def status(self, req: Any, *, timeout: float) -> colo_pb2.GetStatusResponse:
        domains = [colo_pb2.DomainStatus(domain=req.domain)] if req.domain else []
        return colo_pb2.GetStatusResponse(domains=domains)

    async def release(self, req: Any, *, timeout: float) -> colo_pb2.ReleaseResponse:
        return colo_pb2.ReleaseResponse()

    async def checkpoint(self, req: Any, *, timeout: float) -> colo_pb2.AgentCheckpointResponse:
        await asyncio.sleep(3600)  # armed: never fires here
        raise AssertionError


def _protect(pages: int) -> colo_pb2.ProtectDomainRequest:
    spec = colo_pb2.DomainSpec(domain="big", sim=colo_pb2.SimDomainSpec(pages=pages))
    return colo_pb2.ProtectDomainRequest(spec=spec, primary_host="a", secondary_host="b", wait=True)


async def _cluster(tmp: Path, fail_prepares: int) -> tuple[Coordinator, list[tuple[str, float]]]:
    core = Coordinator(SqliteStore(tmp / "c.db"), Settings(reprotect_backoff=0.2))
    log: list[tuple[str, float]] = []
    fakes = {h: FakeAgent(h, log, fail_prepares if h == "b" else 0) for h in ("a", "b")}
    core.registry.client = lambda host: fakes[host]  # type: ignore[assignment,return-value]
    core.registry.connect = lambda host: None  # type: ignore[method-assign]
    await core.start()
    for host in ("a", "b"):
        await core.hosts.register_agent(
            colo_pb2.RegisterAgentRequest(
                host_id=host,
                incarnation="i-" + host,
                grpc_address="127.0.0.1:1",
                data_address="127.0.0.1:2",
                backends=["sim"],
            )
        )
    return core, log


async def _close(core: Coordinator) -> None:
    await core.close()
    core.store.close()


def test_prepare_secondary_gets_time_for_the_guests_size(tmp_path: Path) -> None:
    async def go() -> None:
        core, log = await _cluster(tmp_path, 0)
        try:
            reply = await core.protect(_protect(GIB2))
            assert reply.pair.state == colo_pb2.PAIR_STATE_PROTECTED
            (prepare,) = [t for what, t in log if what == "prepare"]
            assert prepare >= 30.0, f"PrepareSecondary of a 2 GiB guest got {prepare:.1f} s"
            await core.unprotect(colo_pb2.UnprotectDomainRequest(domain="big"))
            reply = await core.protect(_protect(1024))
            small = [t for what, t in log if what == "prepare"][-1]
            assert small < 6.0, "a small guest keeps the short deadline"
        finally:
            await _close(core)

    asyncio.run(go())


def test_protect_wait_follows_the_coordinators_retries(tmp_path: Path) -> None:
    async def go() -> None:
        core, _ = await _cluster(tmp_path, 1)
        try:
            reply = await core.protect(_protect(GIB2))
            assert reply.pair.state == colo_pb2.PAIR_STATE_PROTECTED
            assert reply.pair.checkpoint_counts.failed == 1 and reply.pair.generation == 2
        finally:
            await _close(core)

    asyncio.run(go())


def test_a_wait_that_runs_out_says_what_is_going_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module.deadlines, "first_boot_budget", lambda spec, settings: 0.5)

    async def go() -> None:
        core, _ = await _cluster(tmp_path, 1000)
        try:
            with pytest.raises(RpcError) as err:
                await core.protect(_protect(GIB2))
            message = err.value.message
            assert "2.0 GiB guest" in message and "retries the first boot" in message
            assert "colo watch --domain big" in message
        finally:
            await _close(core)

    asyncio.run(go())
