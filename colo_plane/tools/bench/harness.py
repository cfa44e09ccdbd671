"""The benches' one harness: subject and baseline interleaved in rounds,
the median of per-round ratios with its spread, tails only from enough
samples, and a warning when the machine's own noise is too high for a
verdict to mean anything.

The machine is shared (a 2-core VM on a shared host): a minute of a
neighbour's build slows whatever runs in it.  Running baseline and subject
in the same round makes such a minute slow both, so their ratio keeps; the
median over rounds keeps when a few rounds are hit anyway; the baseline's
own variation across rounds is the figure for the noise the run met."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

# pyperf's rule (`pyperf check`): a result whose standard deviation is 10 %
# of its mean or more "may be unstable".  Our goals sit 15-20 % from parity
# (stream >= 0.85, service >= 0.8): past 10 % a single round's ratio (two
# measurements, ~sqrt(2) x the noise) moves by about as much as that margin,
# and a verdict rests on the median of many rounds alone.
NOISE_LIMIT = 0.10

# A percentile is printed only with at least 10 samples beyond it: a p99
# needs 1,000 (from 100 it is the second-worst sample), a p90 100; below
# that only the median and the max, which never pretend to be more.
TAIL_MIN_SAMPLES = {"p99": 1000, "p90": 100}

Z95 = 1.96  # the normal quantile of a two-sided 95 % interval

# Resamples of a bootstrap interval (Efron's percentile interval: 1,000 is
# the usual count for a 95 % one), and the rounds below which whole rounds
# are too few to resample and single pairs are resampled instead.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_MIN_ROUNDS = 8

B = TypeVar("B")
S = TypeVar("S")


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile, linear between order statistics (numpy's default,
    statistics.quantiles(method="inclusive")): for spreads of a few rounds."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-percentile by nearest rank (the ceil(q * n)-th smallest): a
    sample that was measured, as latency percentiles are reported."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def quantile_interval(values: Sequence[float], q: float) -> tuple[float, float]:
    """A distribution-free ~95 % confidence interval of the q-quantile: the
    order statistics at ranks n q -/+ 1.96 sqrt(n q (1 - q)) (the count of
    samples below the true quantile is binomial), rounded outwards.  It
    assumes nothing about the shape of the distribution, which for pauses
    and ratios is skewed."""
    if not values:
        raise ValueError("interval of no values")
    ordered = sorted(values)
    n = len(ordered)
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo = max(1, math.floor(n * q - half))  # 1-based ranks
    hi = min(n, math.ceil(n * q + 1 + half))
    return ordered[lo - 1], ordered[hi - 1]


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """The median's ~95 % interval: for 7 rounds the min and the max (98 %),
    for 40 the 13th and the 28th."""
    return quantile_interval(values, 0.5)


@dataclasses.dataclass(frozen=True)
class Spread:
    """Where a figure fell across rounds."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float
    cv: float  # standard deviation / mean (0 with fewer than two values)
    median_lo: float  # the median's 95 % confidence interval (median_interval)
    median_hi: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("spread of no values")
        mean = statistics.fmean(values)
        cv = statistics.stdev(values) / mean if len(values) > 1 and mean else 0.0
        lo, hi = median_interval(values)
        return cls(
            n=len(values),
            median=statistics.median(values),
            q1=quantile(values, 0.25),
            q3=quantile(values, 0.75),
            min=min(values),
            max=max(values),
            cv=cv,
            median_lo=lo,
            median_hi=hi,
        )

    def iqr(self, fmt: str = ".2f") -> str:
        return f"{self.q1:{fmt}}-{self.q3:{fmt}}"

    def range(self, fmt: str = ".2f") -> str:
        return f"{self.min:{fmt}}-{self.max:{fmt}}"


@dataclasses.dataclass(frozen=True)
class Tail:
    """Percentiles of pooled samples, each only where there are enough."""

    samples: int
    p50: float
    p90: float | None
    p99: float | None
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Tail:
        if not values:
            raise ValueError("tail of no samples")
        n = len(values)
        return cls(
            samples=n,
            p50=nearest_rank(values, 0.50),
            p90=nearest_rank(values, 0.90) if n >= TAIL_MIN_SAMPLES["p90"] else None,
            p99=nearest_rank(values, 0.99) if n >= TAIL_MIN_SAMPLES["p99"] else None,
            max=max(values),
        )

    @property
    def top(self) -> tuple[str, float]:
        """The highest percentile these samples can carry: p99, p90 or the max."""
        if self.p99 is not None:
            return "p99", self.p99
        if self.p90 is not None:
            return "p90", self.p90
        return "max", self.max

    def text(self, unit: str = "ms", fmt: str = ".2f") -> str:
        parts = [f"p50 {self.p50:{fmt}}"]
        if self.p90 is not None:
            parts.append(f"p90 {self.p90:{fmt}}")
        if self.p99 is not None:
            parts.append(f"p99 {self.p99:{fmt}}")
        parts.append(f"max {self.max:{fmt}}")
        return f"{'  '.join(parts)} {unit} ({self.samples} samples)"


def percentile_of(label: str, values: Sequence[float]) -> float:
    """p50 / p90 / p99 / max of values, by Tail's names."""
    return max(values) if label == "max" else nearest_rank(values, int(label[1:]) / 100)


def tail_interval(label: str, values: Sequence[float]) -> tuple[float, float]:
    """The ~95 % interval of p50 / p90 / p99 of values; a max has none (it is
    what it is, and says so by being printed as the max)."""
    if label == "max":
        return max(values), max(values)
    return quantile_interval(values, int(label[1:]) / 100)


def tail_label(samples: int) -> str:
    """The highest percentile samples can carry (TAIL_MIN_SAMPLES): p99, p90, else p50."""
    for label in ("p99", "p90"):
        if samples >= TAIL_MIN_SAMPLES[label]:
            return label
    return "p50"


@dataclasses.dataclass(frozen=True)
class PairedTail:
    """A tail of the subject against the same tail of its baseline, sampled
    one for one in the same rounds, and a goal "subject <= factor x baseline
    + slack" on them.

    Why the same tail of the baseline, not its median: on a shared machine
    a p99 is the 1 % of samples a neighbour's time slice hit, and it hits
    the baseline's samples as often when they alternate with the subject's.
    A subject's p99 over a baseline's median measures the neighbours (the
    same code gave 1.6x to 8.5x); over the baseline's p99 it measures the
    code, which is the one thing the bench is for."""

    label: str  # p99, p90 or p50: the highest that the samples carry
    samples: int  # pairs, pooled over the rounds
    subject: float
    subject_interval: tuple[float, float]  # quantile_interval of the pooled samples
    baseline: float
    baseline_interval: tuple[float, float]
    ratio: float  # subject / baseline
    ratio_interval: tuple[float, float]  # bootstrap: whole rounds resampled (bootstrap_interval)
    goal: float  # factor x baseline + slack
    verdict: Verdict  # subject / goal against 1, its interval from the same resamples


def bootstrap_interval(
    groups: Sequence[Sequence[S]],
    stats: Callable[[list[S]], Sequence[float]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """95 % percentile-bootstrap intervals of each of stats(pooled samples),
    from the groups resampled with replacement, a whole group at a time: a
    burst of noise spans many consecutive samples, so rounds, not samples,
    are what is independent.  Below BOOTSTRAP_MIN_ROUNDS groups the samples
    themselves are resampled.  Seeded: one run's figures print the same."""
    if not groups or not any(groups):
        raise ValueError("bootstrap of no samples")
    units = [list(g) for g in groups if g]
    if len(units) < BOOTSTRAP_MIN_ROUNDS:
        units = [[x] for g in units for x in g]
    rng = random.Random(seed)
    draws: list[Sequence[float]] = []
    for _ in range(resamples):
        pooled = [x for unit in rng.choices(units, k=len(units)) for x in unit]
        draws.append(stats(pooled))
    return [(quantile(column, 0.025), quantile(column, 0.975)) for column in zip(*draws, strict=True)]


def paired_tail(
    rounds: Sequence[Sequence[tuple[float, float]]],
    *,
    factor: float,
    slack: float,
    label: str = "",
    seed: int = 0,
) -> PairedTail:
    """The label percentile (default: the highest the pairs carry) of the
    subjects against that of the baselines; rounds of (baseline, subject)
    pairs, each pair measured back to back.  The verdict: met where the
    bootstrap interval of subject / goal lies at or below 1, NO where above
    it, else None (this run cannot tell)."""
    pairs = [p for r in rounds for p in r]
    if not pairs:
        raise ValueError("paired tail of no samples")
    label = label or tail_label(len(pairs))
    q = int(label[1:]) / 100

    def figures(sample: list[tuple[float, float]]) -> tuple[float, float]:
        base = nearest_rank([b for b, _ in sample], q)
        subj = nearest_rank([s for _, s in sample], q)
        return subj / base, subj / (factor * base + slack)

    ratio, margin = figures(pairs)
    ratio_ci, margin_ci = bootstrap_interval(rounds, figures, seed=seed)
    baselines, subjects = [b for b, _ in pairs], [s for _, s in pairs]
    base = nearest_rank(baselines, q)
    verdict = judge(margin, 1.0, at_least=False, interval=margin_ci, basis=f"{label} / goal")
    return PairedTail(
        label=label,
        samples=len(pairs),
        subject=nearest_rank(subjects, q),
        subject_interval=quantile_interval(subjects, q),
        baseline=base,
        baseline_interval=quantile_interval(baselines, q),
        ratio=ratio,
        ratio_interval=ratio_ci,
        goal=factor * base + slack,
        verdict=verdict,
    )


@dataclasses.dataclass(frozen=True)
class Round(Generic[B, S]):
    index: int
    baseline_first: bool
    baseline: B
    subject: S


def baseline_first(index: int, *, subject_first: bool = False) -> bool:
    """Whether round index runs the baseline first: every other round."""
    return (index % 2 == 0) != subject_first


def interleave(
    rounds: int,
    baseline: Callable[[], B],
    subject: Callable[[], S],
    *,
    subject_first: bool = False,
    warmup: int = 0,
) -> list[Round[B, S]]:
    """Runs baseline and subject once each per round, swapping which goes
    first every round (baseline first in round 0, or subject first with
    subject_first), so that neither always meets the machine warmed, or
    cooled, by the other, and a slow minute hits both.
    warmup rounds run first and are dropped (cold caches, first page faults)."""
    if rounds < 1:
        raise ValueError("at least one round")
    out: list[Round[B, S]] = []
    for i in range(-warmup, rounds):
        first = baseline_first(i, subject_first=subject_first)
        if first:
            b = baseline()
            s = subject()
        else:
            s = subject()
            b = baseline()
        if i >= 0:
            out.append(Round(i, first, b, s))
    return out


async def interleave_async(
    rounds: int,
    baseline: Callable[[], Awaitable[B]],
    subject: Callable[[], Awaitable[S]],
    *,
    subject_first: bool = False,
) -> list[Round[B, S]]:
    """interleave for a bench that runs in an event loop."""
    if rounds < 1:
        raise ValueError("at least one round")
    out: list[Round[B, S]] = []
    for i in range(rounds):
        first = baseline_first(i, subject_first=subject_first)
        if first:
            b = await baseline()
            s = await subject()
        else:
            s = await subject()
            b = await baseline()
        out.append(Round(i, first, b, s))
    return out


@dataclasses.dataclass(frozen=True)
class Noise:
    """The machine's own noise in this run: the variation across rounds of
    a baseline whose work never changes."""

    what: str  # which baseline, e.g. "raw TCP baseline"
    cv: float
    rounds: int
    limit: float
    noisy: bool  # cv past limit

    @classmethod
    def of(cls, what: str, baseline: Sequence[float], *, limit: float = NOISE_LIMIT) -> Noise:
        cv = Spread.of(baseline).cv
        return cls(what, cv, len(baseline), limit, cv > limit)

    def text(self) -> str:
        return f"machine noise: {self.what} varied by CV {self.cv:.0%} over {self.rounds} rounds"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A figure against its goal: met, not met, or None when this run cannot
    tell (pyperf compare_to's "not significant"): the figure is as close to
    the goal as its noise reaches, so a rerun may well fall on the other
    side.  Only a verdict that its own noise cannot flip is met or NO."""

    figure: float
    goal: float
    at_least: bool  # the goal is figure >= goal (else figure <= goal)
    met: bool | None
    figure_meets: bool  # which side of the goal the figure itself fell, telling or not
    interval: tuple[float, float]  # the figure's 95 % confidence interval from this run
    goal_interval: tuple[float, float]  # the goal's, where it is measured too (an ideal)
    fragile: bool  # their distance is within their noise (judge)
    basis: str = ""  # what the figure is, where it is not plain (judge_tail)

    def word(self) -> str:
        return "?" if self.met is None else "met" if self.met else "NO"


def judge(
    figure: float,
    goal: float,
    *,
    at_least: bool,
    interval: tuple[float, float],
    goal_interval: tuple[float, float] | None = None,
    basis: str = "",
) -> Verdict:
    """The verdict, or None where the figure's distance from the goal is
    within the noise of the two: sqrt(a^2 + b^2), a and b the half-widths of
    their intervals on the sides that face each other (two overlapping 95 %
    intervals are not yet a difference within the noise; a goal that is a
    constant has b = 0, and the rule is: the goal inside the interval)."""
    meets = figure >= goal if at_least else figure <= goal
    lo, hi = interval
    glo, ghi = goal_interval or (goal, goal)
    if figure >= goal:
        a, b = figure - lo, ghi - goal
    else:
        a, b = hi - figure, goal - glo
    fragile = abs(figure - goal) <= math.hypot(a, b)
    return Verdict(
        figure, goal, at_least, None if fragile else meets, meets, (lo, hi), (glo, ghi), fragile, basis
    )


def judge_tail(
    label: str, values: Sequence[float], goal: float, *, goal_interval: tuple[float, float] | None = None
) -> Verdict:
    """A goal "label <= goal" (label p50 / p90 / p99 / max) on samples.  With
    too few samples for label (TAIL_MIN_SAMPLES), the verdict rests on what
    the samples can say: their max is above any of their percentiles, so a
    max within the goal meets it; the highest percentile they carry is below
    label, so one past the goal misses it; in between, met is None: not
    enough samples to tell, and the bench says so rather than guess."""
    n = len(values)
    if label in {"max", "p50"} or n >= TAIL_MIN_SAMPLES[label]:
        figure, interval = percentile_of(label, values), tail_interval(label, values)
        return judge(
            figure, goal, at_least=False, interval=interval, goal_interval=goal_interval, basis=label
        )
    below = "p90" if n >= TAIL_MIN_SAMPLES["p90"] and label == "p99" else "p50"
    low, high = percentile_of(below, values), max(values)
    if high <= goal:
        return judge(
            high,
            goal,
            at_least=False,
            interval=(high, high),
            goal_interval=goal_interval,
            basis=f"max, for {label}",
        )
    if low > goal:
        interval = tail_interval(below, values)
        basis = f"{below}, for {label}"
        return judge(low, goal, at_least=False, interval=interval, goal_interval=goal_interval, basis=basis)
    glo, ghi = goal_interval or (goal, goal)
    return Verdict(low, goal, False, None, True, (low, high), (glo, ghi), True, f"{below}..max, for {label}")


def judge_median(spread: Spread, goal: float, *, at_least: bool) -> Verdict:
    """The verdict on a median over rounds, with the median's interval."""
    return judge(spread.median, goal, at_least=at_least, interval=(spread.median_lo, spread.median_hi))


def noise_warning(name: str, noise: Noise) -> list[str]:
    """A warning, with the figure, when the machine's noise is past its limit."""
    if not noise.noisy:
        return []
    return [
        f"{name}: noisy machine: the {noise.what} varied by CV {noise.cv:.1%} over {noise.rounds} "
        f"rounds (limit {noise.limit:.0%}): single rounds mean little; the figures hold as far as "
        "their intervals say"
    ]


def verdict_warning(name: str, verdict: Verdict | None, fmt: str = ".2f") -> list[str]:
    """A warning when the verdict lies within this run's noise."""
    if verdict is None or not verdict.fragile:
        return []
    lo, hi = verdict.interval
    if ".." in verdict.basis:  # judge_tail's "p90..max, for p99"
        return [
            f"{name}: too few samples to tell: the goal {verdict.goal:{fmt}} lies between their "
            f"{verdict.basis.split('..')[0]} {lo:{fmt}} and their max {hi:{fmt}}: take more samples"
        ]
    glo, ghi = verdict.goal_interval
    goal = f"{verdict.goal:{fmt}}" if glo == ghi else f"{verdict.goal:{fmt}} ({glo:{fmt}}-{ghi:{fmt}})"
    what = verdict.basis or "figure"
    figure = f"{what} {lo:{fmt}}" if lo == hi else f"{what} {verdict.figure:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"
    return [
        f"{name}: the verdict is within the noise: the {figure} is as near the goal {goal} as the "
        "noise of the two reaches, so this run cannot tell (the figure alone "
        f"{'meets' if verdict.figure_meets else 'misses'} it): rerun it quieter, or with more rounds"
    ]


def warnings(name: str, noise: Noise, verdict: Verdict | None = None, fmt: str = ".2f") -> list[str]:
    """What the reader must know before trusting name's figures."""
    return noise_warning(name, noise) + verdict_warning(name, verdict, fmt)


def render_warnings(lines: Sequence[str]) -> list[str]:
    return [f"WARNING {line}" for line in lines]
