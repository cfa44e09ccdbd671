"""Reading figures back from a /metrics page (the demo's live view and the
benches): sums of samples, and quantiles from histogram buckets."""

from __future__ import annotations

import math
import urllib.request


def scrape(address: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as reply:
        return str(reply.read().decode())


def _samples(text: str, name: str, labels: dict[str, str]) -> list[tuple[str, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            out.append((rest, float(value)))
    return out


def total(texts: list[str], name: str, **labels: str) -> float:
    """The sum of name's samples carrying labels, over several pages."""
    return sum(v for text in texts for _, v in _samples(text, name, labels))


def quantile(texts: list[str], name: str, q: float, **labels: str) -> float:
    """q-quantile of histogram name (upper bound of the bucket it falls in;
    NaN with no observations), summed over several pages."""
    buckets: dict[float, float] = {}
    for text in texts:
        for rest, value in _samples(text, name + "_bucket", labels):
            le = rest.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value
    if not buckets or buckets.get(math.inf, 0.0) == 0:
        return math.nan
    want = q * buckets[math.inf]
    for bound in sorted(buckets):
        if buckets[bound] >= want:
            return bound
    return math.inf
