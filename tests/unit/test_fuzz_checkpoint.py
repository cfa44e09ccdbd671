"""A short, fixed-seed run of the checkpoint fuzzer (tests/fuzz/ckptfuzz.py;
`make fuzz` runs a million inputs): no invariant violated, and the run
reaches the paths it is for (applied checkpoints, each kind of refusal)."""

from __future__ import annotations

import ckptfuzz

SEED = 20_251
RUNS = 4000  # about 1.5 s

# What the mutations must reach in this run: every check a CHECKPOINT's
# claims go through, and the malformed-record classes around them.
MUST_SEE = (
    "PROTOCOL",
    "WRONG_GENERATION",
    "STALE_GENERATION",
    "BAD_LENGTH",
    "BAD_PADDING",
    "PFN_RANGE",
    "UNKNOWN_RECORD",
    "WRONG_DIRECTION",
    "TRUNCATED",
    "EOF",
)


def test_short_fuzz_run() -> None:
    stats = ckptfuzz.fuzz(SEED, 0, RUNS)
    assert stats.violations == 0, "\n".join(stats.messages)
    assert stats.inputs == RUNS
    assert stats.applied > RUNS // 4 and stats.failed_calls > RUNS // 10, stats.as_dict()
    missing = [code for code in MUST_SEE if not stats.codes[code]]
    assert not missing, stats.codes


def test_inputs_depend_on_seed_and_index_only() -> None:
    """A saved seed and index is enough to rebuild an input (crash reports name only those)."""
    assert ckptfuzz.make_input(SEED, 17) == ckptfuzz.make_input(SEED, 17)
    assert ckptfuzz.make_input(SEED, 17) != ckptfuzz.make_input(SEED, 18)
    a, b = ckptfuzz.fuzz(SEED, 100, 400), ckptfuzz.fuzz(SEED, 100, 400)
    assert a.as_dict() == b.as_dict()
