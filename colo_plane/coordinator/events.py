"""WatchEvents fan-out: every event gets a sequence number, goes into a
bounded history and to every watcher whose filter it matches.  A watcher
that falls too far behind is cut off (it reconnects with after_sequence)
rather than slowing the coordinator down."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Collection

from colo_plane._proto import colo_pb2

HISTORY = 20_000
WATCHER_QUEUE = 10_000


class WatcherTooSlow(Exception):
    """The watcher's queue overflowed: events were dropped for it."""


class Watcher:
    def __init__(self, domain: str, kinds: Collection[int]) -> None:
        self.domain = domain
        self.kinds = frozenset(kinds)
        self.queue: asyncio.Queue[colo_pb2.Event | None] = asyncio.Queue(WATCHER_QUEUE)
        self.overflowed = False

    def wants(self, event: colo_pb2.Event) -> bool:
        if self.domain and event.domain != self.domain:
            return False
        return not self.kinds or event.kind in self.kinds

    def offer(self, event: colo_pb2.Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue._queue.clear()  # type: ignore[attr-defined]  # free it now; the stream ends
            self.queue.put_nowait(None)


class EventBus:
    def __init__(self, history: int = HISTORY) -> None:
        self._history: deque[colo_pb2.Event] = deque(maxlen=history)
        self._watchers: set[Watcher] = set()
        self.sequence = 0

    def publish(self, event: colo_pb2.Event) -> colo_pb2.Event:
        self.sequence += 1
        event.sequence = self.sequence
        event.time.seconds, event.time.nanos = divmod(time.time_ns(), 1_000_000_000)
        self._history.append(event)
        for watcher in self._watchers:
            if watcher.wants(event):
                watcher.offer(event)
        return event

    def recent(
        self, *, domain: str = "", kinds: Collection[int] = (), limit: int = 0, after_sequence: int = 0
    ) -> list[colo_pb2.Event]:
        probe = Watcher(domain, kinds)
        if after_sequence:
            return [e for e in self._history if e.sequence > after_sequence and probe.wants(e)]
        if limit <= 0:
            return []
        out: list[colo_pb2.Event] = []
        for event in reversed(self._history):
            if probe.wants(event):
                out.append(event)
                if len(out) >= limit:
                    break
        out.reverse()
        return out

    async def watch(
        self, *, domain: str = "", kinds: Collection[int] = (), history: int = 0, after_sequence: int = 0
    ) -> AsyncIterator[colo_pb2.Event]:
        """Replays what was asked for, then follows live; raises WatcherTooSlow."""
        watcher = Watcher(domain, kinds)
        # Subscribe before reading the history: nothing falls in between
        # (both happen without an await, on the one event loop).
        self._watchers.add(watcher)
        try:
            replay = self.recent(domain=domain, kinds=kinds, limit=history, after_sequence=after_sequence)
            last = 0
            for event in replay:
                last = event.sequence
                yield event
            while True:
                item = await watcher.queue.get()
                if item is None:
                    raise WatcherTooSlow(f"watcher fell more than {WATCHER_QUEUE} events behind")
                if item.sequence > last:
                    yield item
        finally:
            self._watchers.discard(watcher)
