"""Where a pair's secondary goes: never the primary's host, a different
failure domain when one is free, then the least loaded host."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """A host as placement sees it."""

    host_id: str
    alive: bool = True
    draining: bool = False
    backends: frozenset[str] = frozenset({"sim"})
    labels: dict[str, str] = field(default_factory=dict)
    roles: int = 0  # roles the coordinator has assigned there
    max_domains: int = 0  # 0: no limit


@dataclass(frozen=True)
class Choice:
    host_id: str
    why: str


def shared_failure_domains(a: dict[str, str], b: dict[str, str], keys: Sequence[str]) -> list[str]:
    """The keys on which a and b sit in the same failure domain."""
    return [k for k in keys if k in a and a.get(k) == b.get(k)]


def eligible(c: Candidate, *, backend: str, primary: str, exclude: Iterable[str] = ()) -> str:
    """Why c cannot take the secondary ('' when it can)."""
    if c.host_id == primary:
        return "it runs the primary"
    if c.host_id in set(exclude):
        return "excluded"
    if not c.alive:
        return "not alive"
    if c.draining:
        return "draining"
    if backend not in c.backends:
        return f"no {backend} backend"
    if c.max_domains and c.roles >= c.max_domains:
        return f"full ({c.roles}/{c.max_domains} domains)"
    return ""


def choose_secondary(
    candidates: Sequence[Candidate],
    *,
    primary: Candidate,
    backend: str,
    keys: Sequence[str],
    exclude: Iterable[str] = (),
) -> Choice | None:
    """The best host for the secondary of a pair whose primary is primary,
    or None when no host can take it."""
    excluded = set(exclude)
    fit = [
        c for c in candidates if not eligible(c, backend=backend, primary=primary.host_id, exclude=excluded)
    ]
    if not fit:
        return None

    def rank(c: Candidate) -> tuple[int, int, str]:
        return (len(shared_failure_domains(c.labels, primary.labels, keys)), c.roles, c.host_id)

    best = min(fit, key=rank)
    shared = shared_failure_domains(best.labels, primary.labels, keys)
    if shared:
        where = (
            "shares "
            + ", ".join(f"{k}={best.labels[k]}" for k in shared)
            + " with the primary (no other host"
        )
        where += " is free)"
    elif any(k in primary.labels for k in keys):
        where = "in a different failure domain from the primary"
    else:
        where = "no failure-domain labels to compare"
    return Choice(
        best.host_id, f"{where}; holds {best.roles} role(s), the fewest of {len(fit)} eligible host(s)"
    )
