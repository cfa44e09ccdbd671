"""Where a secondary goes."""

from __future__ import annotations

from colo_plane.coordinator.placement import Candidate, choose_secondary, eligible

KEYS = ("zone", "rack")


def _choose(cands: list[Candidate], primary: Candidate, backend: str = "sim") -> str | None:
    choice = choose_secondary(cands, primary=primary, backend=backend, keys=KEYS)
    return choice.host_id if choice else None


def test_never_the_primary_host() -> None:
    a = Candidate("a")
    assert _choose([a], a) is None
    assert eligible(a, backend="sim", primary="a") == "it runs the primary"


def test_a_different_failure_domain_beats_a_lighter_load() -> None:
    primary = Candidate("a", labels={"zone": "z1"})
    same_zone_idle = Candidate("b", labels={"zone": "z1"}, roles=0)
    other_zone_busy = Candidate("c", labels={"zone": "z2"}, roles=5)
    assert _choose([primary, same_zone_idle, other_zone_busy], primary) == "c"
    choice = choose_secondary(
        [primary, same_zone_idle, other_zone_busy], primary=primary, backend="sim", keys=KEYS
    )
    assert choice is not None and "different failure domain" in choice.why


def test_same_failure_domain_when_nothing_else_is_free() -> None:
    primary = Candidate("a", labels={"zone": "z1"})
    same_zone = Candidate("b", labels={"zone": "z1"})
    dead = Candidate("c", labels={"zone": "z2"}, alive=False)
    choice = choose_secondary([primary, same_zone, dead], primary=primary, backend="sim", keys=KEYS)
    assert choice is not None and choice.host_id == "b" and "zone=z1" in choice.why


def test_least_loaded_then_name() -> None:
    primary = Candidate("a")
    assert (
        _choose([primary, Candidate("b", roles=3), Candidate("c", roles=1), Candidate("d", roles=1)], primary)
        == "c"
    )


def test_dead_draining_full_or_without_backend_are_skipped() -> None:
    primary = Candidate("a")
    cands = [
        primary,
        Candidate("dead", alive=False),
        Candidate("drain", draining=True),
        Candidate("full", roles=2, max_domains=2),
        Candidate("simonly", backends=frozenset({"sim"})),
    ]
    assert _choose(cands, primary, backend="xen") is None
    assert _choose(cands, primary) == "simonly"
    assert eligible(cands[3], backend="sim", primary="a").startswith("full")


def test_more_shared_keys_rank_lower() -> None:
    primary = Candidate("a", labels={"zone": "z1", "rack": "r1"})
    same_rack = Candidate("b", labels={"zone": "z1", "rack": "r1"})
    same_zone = Candidate("c", labels={"zone": "z1", "rack": "r2"})
    assert _choose([same_rack, same_zone], primary) == "c"
