"""The benches' harness: its statistics on known inputs, the order it runs
rounds in, the rule for which percentiles samples can carry, and when it
warns."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from colo_plane.tools.bench import harness
from colo_plane.tools.bench.checkpoint import default_checkpoints
from colo_plane.tools.bench.stream import same_bytes_rounds


def test_quantile_interpolates_like_statistics_inclusive() -> None:
    values = [7.0, 1.0, 4.0, 2.0, 10.0, 3.0]
    assert harness.quantile(values, 0.25) == pytest.approx(2.25)
    assert harness.quantile(values, 0.75) == pytest.approx(6.25)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    assert (harness.quantile(values, 0.25), harness.quantile(values, 0.75)) == pytest.approx((q1, q3))
    assert harness.quantile(values, 0.0) == 1.0
    assert harness.quantile(values, 1.0) == 10.0
    assert harness.quantile([5.0], 0.5) == 5.0


def test_nearest_rank_is_a_measured_sample() -> None:
    thousand = [float(x) for x in range(1000, 0, -1)]  # order of arrival must not matter
    assert harness.nearest_rank(thousand, 0.99) == 990.0
    assert harness.nearest_rank(thousand, 0.50) == 500.0
    hundred = [float(x) for x in range(1, 101)]
    assert harness.nearest_rank(hundred, 0.99) == 99.0  # the second-worst: why p99 needs more
    assert harness.nearest_rank([3.0, 1.0], 0.5) == 1.0
    with pytest.raises(ValueError, match="no values"):
        harness.nearest_rank([], 0.5)


def test_spread_median_iqr_range_cv() -> None:
    s = harness.Spread.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.n, s.median, s.q1, s.q3, s.min, s.max) == (5, 3.0, 2.0, 4.0, 1.0, 100.0)
    assert s.cv == pytest.approx(statistics.stdev([1, 2, 3, 4, 100]) / 22.0)
    assert s.iqr() == "2.00-4.00"
    assert s.range(".0f") == "1-100"
    # Five rounds: the median's interval is the whole range (94 % coverage).
    assert (s.median_lo, s.median_hi) == (1.0, 100.0)
    assert harness.Spread.of([2.0]).cv == 0.0


def test_median_interval_from_order_statistics() -> None:
    forty = [float(x) for x in range(1, 41)]
    assert harness.median_interval(forty) == (13.0, 28.0)
    seven = [float(x) for x in range(1, 8)]
    assert harness.median_interval(seven) == (1.0, 7.0)
    # A p99 of 1,000: ranks 991 -/+ 1.96 sqrt(9.9), rounded outwards.
    thousand = [float(x) for x in range(1, 1001)]
    assert harness.quantile_interval(thousand, 0.99) == (983.0, 998.0)


def test_tail_prints_only_percentiles_it_has_samples_for() -> None:
    t999 = harness.Tail.of([float(x) for x in range(1, 1000)])
    assert t999.p99 is None
    assert t999.p90 == 900.0
    assert t999.top == ("p90", 900.0)
    assert "p99" not in t999.text()
    assert t999.text("ms", ".0f") == "p50 500  p90 900  max 999 ms (999 samples)"
    t1000 = harness.Tail.of([float(x) for x in range(1, 1001)])
    assert t1000.p99 == 990.0
    assert t1000.top == ("p99", 990.0)
    t99 = harness.Tail.of([float(x) for x in range(1, 100)])
    assert (t99.p90, t99.p99) == (None, None)
    assert t99.top == ("max", 99.0)
    assert t99.text("s", ".0f") == "p50 50  max 99 s (99 samples)"


def test_interleave_alternates_which_goes_first() -> None:
    calls: list[str] = []

    def baseline() -> int:
        calls.append("B")
        return len(calls)

    def subject() -> int:
        calls.append("S")
        return len(calls)

    rounds = harness.interleave(4, baseline, subject)
    assert "".join(calls) == "BSSBBSSB"
    assert [r.baseline_first for r in rounds] == [True, False, True, False]
    assert [(r.index, r.baseline, r.subject) for r in rounds] == [(0, 1, 2), (1, 4, 3), (2, 5, 6), (3, 8, 7)]

    calls.clear()
    harness.interleave(3, baseline, subject, subject_first=True)
    assert "".join(calls) == "SBBSSB"


def test_interleave_drops_warmup_rounds_and_keeps_alternating() -> None:
    calls: list[str] = []
    rounds = harness.interleave(
        2, lambda: calls.append("B") or len(calls), lambda: calls.append("S") or len(calls), warmup=1
    )
    assert "".join(calls) == "SBBSSB"  # the warm-up round, then round 0 baseline first
    assert [r.index for r in rounds] == [0, 1]
    assert [r.baseline for r in rounds] == [3, 6]
    with pytest.raises(ValueError, match="round"):
        harness.interleave(0, lambda: 0, lambda: 0)


def test_interleave_async_same_order() -> None:
    calls: list[str] = []

    async def baseline() -> str:
        calls.append("B")
        return "b"

    async def subject() -> str:
        calls.append("S")
        return "s"

    rounds = asyncio.run(harness.interleave_async(3, baseline, subject))
    assert "".join(calls) == "BSSBBS"
    assert [(r.baseline, r.subject) for r in rounds] == [("b", "s")] * 3


def test_noise_limit_is_pyperf_ten_percent() -> None:
    assert not harness.Noise.of("raw", [10.0, 10.0, 10.0]).noisy
    calm = harness.Noise.of("raw", [9.0, 10.0, 11.0])  # stdev 1, mean 10: exactly 10 %
    assert calm.cv == pytest.approx(0.10)
    assert not calm.noisy
    rough = harness.Noise.of("raw", [8.0, 10.0, 12.0])
    assert rough.noisy
    assert rough.text() == "machine noise: raw varied by CV 20% over 3 rounds"


def test_judge_median_cannot_tell_when_the_goal_is_inside_the_interval() -> None:
    ratios = harness.Spread.of([0.80, 0.86, 0.90, 0.95, 1.00, 1.05, 1.10])  # interval: 0.80-1.10
    v = harness.judge_median(ratios, 0.85, at_least=True)
    assert (v.figure, v.met, v.figure_meets, v.fragile, v.word()) == (0.95, None, True, True, "?")
    v = harness.judge_median(ratios, 0.75, at_least=True)
    assert (v.met, v.fragile, v.word()) == (True, False, "met")
    v = harness.judge_median(ratios, 1.20, at_least=True)
    assert (v.met, v.fragile, v.word()) == (False, False, "NO")
    v = harness.judge_median(ratios, 1.20, at_least=False)  # figure <= goal
    assert v.met


def test_judge_a_measured_goal_adds_its_noise() -> None:
    # 1.0 apart; half-widths facing each other 0.5 and 1.0: sqrt(1.25) > 1.
    v = harness.judge(3.0, 4.0, at_least=False, interval=(2.5, 3.5), goal_interval=(3.0, 4.5))
    assert (v.met, v.figure_meets, v.fragile) == (None, True, True)
    # The intervals overlap (3.4-3.5), yet 0.5 and 0.6 make 0.78 < 1: a verdict.
    v = harness.judge(3.0, 4.0, at_least=False, interval=(2.5, 3.5), goal_interval=(3.4, 4.5))
    assert (v.met, v.fragile) == (True, False)
    # The other side: the figure past the goal uses its lower and the goal's upper half.
    v = harness.judge(5.0, 4.0, at_least=False, interval=(4.5, 9.0), goal_interval=(1.0, 4.5))
    assert (v.met, v.fragile) == (False, False)  # hypot(0.5, 0.5) = 0.71 < 1
    v = harness.judge(5.0, 4.0, at_least=False, interval=(4.2, 9.0), goal_interval=(1.0, 4.7))
    assert (v.met, v.figure_meets) == (None, False)  # hypot(0.8, 0.7) = 1.06 > 1


def test_judge_tail_with_enough_samples_uses_the_percentile() -> None:
    thousand = [float(x) for x in range(1, 1001)]
    v = harness.judge_tail("p99", thousand, 995.0)
    assert (v.figure, v.figure_meets, v.basis, v.interval) == (990.0, True, "p99", (983.0, 998.0))
    assert (v.met, v.fragile) == (None, True)  # 995 is inside 983-998
    v = harness.judge_tail("p99", thousand, 980.0)
    assert (v.met, v.fragile) == (False, False)
    assert harness.judge_tail("p99", thousand, 1500.0).met


def test_judge_tail_with_too_few_samples_uses_bounds() -> None:
    two_hundred = [float(x) for x in range(1, 201)]  # p90 180, max 200
    v = harness.judge_tail("p99", two_hundred, 250.0)
    assert (v.met, v.figure, v.basis) == (True, 200.0, "max, for p99")
    v = harness.judge_tail("p99", two_hundred, 150.0)
    assert (v.met, v.figure, v.basis) == (False, 180.0, "p90, for p99")
    v = harness.judge_tail("p99", two_hundred, 190.0)
    assert (v.met, v.word(), v.fragile) == (None, "?", True)
    noise = harness.Noise.of("probe", [1.0, 1.0])
    assert "too few samples to tell" in harness.warnings("x", noise, v)[0]
    ten = [float(x) for x in range(1, 11)]
    assert harness.judge_tail("max", ten, 10.5).met
    assert not harness.judge_tail("max", ten, 9.5).met


def test_warnings_carry_the_figures() -> None:
    noise = harness.Noise.of("raw TCP baseline", [8.0, 10.0, 12.0])
    fragile = harness.judge(0.9, 0.85, at_least=True, interval=(0.8, 1.0))
    lines = harness.warnings("full", noise, fragile)
    assert len(lines) == 2
    assert "CV 20.0% over 3 rounds (limit 10%)" in lines[0]
    assert "goal 0.85" in lines[1]
    assert "cannot tell (the figure alone meets it)" in lines[1]
    assert "0.90 (0.80-1.00)" in lines[1]
    quiet = harness.Noise.of("raw TCP baseline", [10.0, 10.1, 9.9])
    firm = harness.judge(1.2, 0.85, at_least=True, interval=(1.1, 1.3))
    assert harness.warnings("full", quiet, firm) == []
    assert harness.render_warnings(["x"]) == ["WARNING x"]


def test_checkpoint_counts_carry_a_p99_where_the_budget_allows() -> None:
    assert default_checkpoints(1_000, 15) == 1005  # 67 a round: a pooled p99
    assert default_checkpoints(10_000, 15) == 1005
    assert default_checkpoints(100_000, 15) == 105  # 410 MB each: a p90 and the max
    assert default_checkpoints(100_000, 7) % 7 == 0


def test_stream_dirty_case_moves_the_full_cases_bytes() -> None:
    assert same_bytes_rounds(80, 65536, 10_000, 2) == 262  # 269 MB a round against 2 x 41 MB
    assert same_bytes_rounds(80, 65536, 65536, 1) == 80
    assert same_bytes_rounds(3, 65536, 60_000, 2) == 3  # never fewer than asked
