"""φ-accrual failure detection (liveness.py) and the detector's use of it:
a clockwork host is suspected at the floor, a busy one after the slack its
own history asks for, the coordinator's own stalls are not an agent's
silence, and a host that keeps being lost is damped."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from colo_plane._proto import colo_pb2
from colo_plane.coordinator.core import Coordinator
from colo_plane.coordinator.liveness import (
    FLAP_LIMIT,
    FLAP_WINDOW,
    PHI_THRESHOLD,
    Flaps,
    HeartbeatHistory,
    phi,
)
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.store import SqliteStore


def _history(gaps: list[float]) -> HeartbeatHistory:
    h = HeartbeatHistory(interval=0.1, floor=0.5)
    t = 100.0
    h.beat(t)
    for gap in gaps:
        t += gap
        h.beat(t)
    return h


def test_phi_grows_with_the_silence() -> None:
    values = [phi(s, 0.1, 0.05) for s in (0.1, 0.2, 0.3, 0.4)]
    assert values == sorted(values) and values[0] < 1 and values[-1] > PHI_THRESHOLD


def test_a_clockwork_host_is_suspected_at_the_floor() -> None:
    h = _history([0.1] * 100)
    assert h.timeout() == 0.5
    assert h.phi(0.5) > PHI_THRESHOLD  # the floor binds: it is never suspected sooner


def test_a_busy_host_gets_the_slack_its_history_asks_for() -> None:
    # What agents on a loaded 2-core host showed: mostly on time, now and then 0.5-0.8 s late.
    rng = random.Random(1)
    gaps = [0.1 + rng.random() * 0.1 for _ in range(190)] + [rng.uniform(0.5, 0.8) for _ in range(10)]
    rng.shuffle(gaps)
    h = _history(gaps)
    assert h.timeout() > 0.8, "the 0.52-0.77 s gaps that failed live hosts over are now within bounds"
    assert h.timeout() < 2.0, "a dead host is still noticed"


def test_the_timeout_forgets_an_old_burst() -> None:
    h = _history([0.7] * 20 + [0.1] * 200)  # a burst 20 s ago: out of the window
    assert h.timeout() == 0.5


def test_flaps_damp_a_host_that_keeps_coming_back() -> None:
    f = Flaps()
    for i in range(FLAP_LIMIT - 1):
        f.lost(float(i))
    assert not f.flapping(10.0) and f.factor(10.0) == 1.0
    f.lost(11.0)
    assert f.flapping(12.0) and f.factor(12.0) == 2.0
    f.lost(13.0)
    assert f.factor(14.0) == 4.0
    assert not f.flapping(13.0 + FLAP_WINDOW + 1), "quiet for a whole window: forgiven"


def _registration(host: str) -> colo_pb2.RegisterAgentRequest:
    return colo_pb2.RegisterAgentRequest(
        host_id=host,
        incarnation="i-" + host,
        grpc_address="127.0.0.1:1",
        data_address="127.0.0.1:2",
        backends=["sim"],
    )


def test_the_coordinators_own_stall_is_not_an_agents_silence(tmp_path: Path) -> None:
    async def go() -> None:
        core = Coordinator(SqliteStore(tmp_path / "c.db"), Settings())
        clock = [1000.0]
        core.detector.clock = lambda: clock[0]
        await core.hosts.register_agent(_registration("a"))
        agent = core.registry.agents["a"]
        clock[0] += 0.3
        core.detector._stalled += 0.3  # what _run adds when its tick comes 0.3 s late
        assert core.detector.silence(agent) < 0.01
        await core.registry.close()
        core.store.close()

    asyncio.run(go())


def test_a_flapping_host_takes_no_new_role_and_waits_longer(tmp_path: Path) -> None:
    async def go() -> None:
        core = Coordinator(SqliteStore(tmp_path / "c.db"), Settings())
        for host in ("a", "b"):
            await core.hosts.register_agent(_registration(host))
        floor = core.detector.timeout("b")
        for _ in range(FLAP_LIMIT):
            core.detector.agent_lost(core.registry.agents["b"], "test", "silent")
            await core.hosts.register_agent(_registration("b"))
        agent = core.registry.agents["b"]
        assert agent.flapping and agent.alive
        assert core.detector.timeout("b") >= 2 * floor
        rec = core.machine.create(colo_pb2.DomainSpec(domain="vm1", sim=colo_pb2.SimDomainSpec(pages=8)), "a")
        assert core.roles.place(rec) is None, "its pairs are not bounced back onto it"
        await core.roles.close()
        await core.registry.close()
        core.store.close()

    asyncio.run(go())
