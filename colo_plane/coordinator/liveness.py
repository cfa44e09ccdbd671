"""How long an agent may stay silent before it is suspected: φ-accrual
over its own heartbeat history (Hayashibara et al. 2004, as Cassandra and
Akka use it), the coordinator's own stalls left out, and flap damping.

A fixed timeout is wrong both ways: on a busy hypervisor host heartbeats
arrive late now and then and a 0.5 s timeout fails live hosts over, while
a timeout long enough for the busiest host makes every dead one slow to
notice.  φ-accrual learns each agent's inter-arrival times and suspects it
once the silence is as unlikely as the threshold says (φ = 8: one chance
in 10^8 under the learned distribution).  Hosts that heartbeat like
clockwork are suspected at the floor (--heartbeat-timeout); busy ones get
the slack their own history asks for.

Heartbeat gaps on a loaded host have a heavier tail than the normal
distribution φ assumes (mostly on time, now and then several intervals
late): the largest gap in the window, with TAIL_MARGIN, bounds the
timeout from below too, so a gap the host has already shown and survived
is not a reason to fail it over."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW = 200  # inter-arrival samples kept per agent (20 s at 0.1 s)
MIN_SAMPLES = 5  # below this the learned distribution means little: the floor rules
PHI_THRESHOLD = 8.0  # Cassandra's phi_convict_threshold and Akka's cluster default
TAIL_MARGIN = 1.5  # the timeout is at least this many times the largest recent gap
CEILING_FACTOR = 20.0  # the learned timeout never exceeds this many heartbeat timeouts
FLAP_WINDOW = 600.0  # seconds: losses counted for flap damping
FLAP_LIMIT = 3  # losses in the window from which a host is flapping
FLAP_MAX_FACTOR = 8.0


def _z(phi: float) -> float:
    """The z-score whose upper tail of the standard normal is 10^-phi."""
    target = 10.0**-phi
    lo, hi = 0.0, 40.0
    for _ in range(100):  # bisection: erfc is monotonic
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > target:
            lo = mid
        else:
            hi = mid
    return hi


Z_THRESHOLD = _z(PHI_THRESHOLD)


def phi(silence: float, mean: float, std: float) -> float:
    """-log10 of the chance that a heartbeat comes later than silence."""
    later = 0.5 * math.erfc((silence - mean) / (std * math.sqrt(2)))
    return -math.log10(max(later, 1e-300))


@dataclass
class HeartbeatHistory:
    """One agent's heartbeat inter-arrival times, in coordinator time that
    excludes the coordinator's own stalls (a heartbeat queued behind a
    stalled event loop is not late)."""

    interval: float  # the heartbeat interval agents are told
    floor: float  # --heartbeat-timeout: never suspected sooner
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last: float = 0.0  # awake-time of the last heartbeat (0: none yet)
    _sum: float = 0.0
    _sq: float = 0.0
    _learned: float = 0.0  # recomputed at each beat, read at every tick

    def __post_init__(self) -> None:
        self._learned = self.floor

    def beat(self, awake: float) -> None:
        """A heartbeat (or any answer from the agent) at awake-time awake."""
        if self.last:
            gap = max(0.0, awake - self.last)
            if len(self.samples) == self.samples.maxlen:
                old = self.samples[0]
                self._sum -= old
                self._sq -= old * old
            self.samples.append(gap)
            self._sum += gap
            self._sq += gap * gap
            self._learned = self._learn()
        self.last = awake

    def _learn(self) -> float:
        mean, std = self.stats()
        learned = mean + Z_THRESHOLD * std
        if len(self.samples) >= MIN_SAMPLES:
            learned = max(learned, TAIL_MARGIN * max(self.samples))
        return min(max(self.floor, learned), self.floor * CEILING_FACTOR)

    def forget(self) -> None:
        """A new incarnation: its predecessor's gaps say nothing about it."""
        self.samples.clear()
        self._sum = self._sq = 0.0
        self._learned = self.floor

    def stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the gaps; the deviation is at least
        half the interval (a clockwork history would suspect at once)."""
        n = len(self.samples)
        if n < MIN_SAMPLES:
            return self.interval, self.interval / 2
        mean = self._sum / n
        var = max(0.0, self._sq / n - mean * mean)
        return mean, max(math.sqrt(var), self.interval / 2)

    def timeout(self, factor: float = 1.0) -> float:
        """The silence at which φ reaches the threshold (or TAIL_MARGIN times the
        largest recent gap), within [floor, ceiling]; times factor (flaps)."""
        return self._learned * factor

    def phi(self, silence: float) -> float:
        mean, std = self.stats()
        return phi(silence, mean, std)


@dataclass
class Flaps:
    """Losses of one host: from FLAP_LIMIT in FLAP_WINDOW it is flapping, its
    timeout grows (x2 per loss beyond the limit, at most x8) and it takes no
    new role until it has been quiet for a whole window."""

    losses: deque[float] = field(default_factory=deque)

    def lost(self, now: float) -> None:
        self.losses.append(now)
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self.losses and now - self.losses[0] > FLAP_WINDOW:
            self.losses.popleft()

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self.losses)

    def flapping(self, now: float) -> bool:
        return self.count(now) >= FLAP_LIMIT

    def factor(self, now: float) -> float:
        extra = self.count(now) - FLAP_LIMIT + 1
        return 1.0 if extra <= 0 else min(FLAP_MAX_FACTOR, 2.0**extra)
