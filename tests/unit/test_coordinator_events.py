"""WatchEvents fan-out: history, resume after a sequence, filters, and a
watcher that falls behind is cut off instead of slowing the coordinator."""

from __future__ import annotations

import asyncio

import pytest

from colo_plane._proto import colo_pb2
from colo_plane.coordinator import events
from colo_plane.coordinator.events import EventBus, WatcherTooSlow

STATE = colo_pb2.EVENT_KIND_STATE_CHANGED
ISSUED = colo_pb2.EVENT_KIND_CHECKPOINT_ISSUED


def _publish(bus: EventBus, domain: str, kind: int = STATE) -> colo_pb2.Event:
    return bus.publish(colo_pb2.Event(domain=domain, kind=kind))  # type: ignore[arg-type]


async def _take(stream: object, n: int) -> list[colo_pb2.Event]:
    out = []
    async for event in stream:  # type: ignore[attr-defined]
        out.append(event)
        if len(out) == n:
            break
    return out


def test_history_then_live_in_order() -> None:
    async def go() -> None:
        bus = EventBus()
        for i in range(5):
            _publish(bus, "vm1" if i % 2 == 0 else "vm2")
        stream = bus.watch(domain="vm1", history=2)
        first = await _take(stream, 2)
        assert [e.sequence for e in first] == [3, 5]
        task = asyncio.ensure_future(_take(stream, 1))
        await asyncio.sleep(0)
        _publish(bus, "vm2")
        _publish(bus, "vm1", ISSUED)
        (live,) = await asyncio.wait_for(task, 1)
        assert live.sequence == 7 and live.kind == ISSUED and live.time.seconds > 0

    asyncio.run(go())


def test_after_sequence_and_kinds() -> None:
    async def go() -> None:
        bus = EventBus()
        for i in range(6):
            _publish(bus, "vm1", ISSUED if i % 3 == 0 else STATE)
        got = bus.recent(after_sequence=2, kinds=[ISSUED])
        assert [e.sequence for e in got] == [4]
        assert [e.sequence for e in bus.recent(after_sequence=4)] == [5, 6]

    asyncio.run(go())


def test_a_slow_watcher_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "WATCHER_QUEUE", 10)

    async def go() -> None:
        bus = EventBus()
        stream = bus.watch()
        task = asyncio.ensure_future(_take(stream, 1000))
        await asyncio.sleep(0)
        for _ in range(50):  # no await: the watcher cannot keep up
            _publish(bus, "vm1")
        with pytest.raises(WatcherTooSlow):
            await asyncio.wait_for(task, 1)
        _publish(bus, "vm1")  # the bus goes on for everyone else
        assert bus.sequence == 51

    asyncio.run(go())
