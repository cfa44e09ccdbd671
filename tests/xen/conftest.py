"""Fixtures of the Xen lab suite: it runs only inside the lab's dom0
(tests/xen/run.sh sets COLO_LAB_MODE), never in the normal test run."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

MODE = os.environ.get("COLO_LAB_MODE", "")
OUT = os.environ.get("COLO_LAB_OUT", "/tmp")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MODE:
        skip = pytest.mark.skip(reason="Xen lab only: run `make xen-test`")
        for item in items:
            item.add_marker(skip)


def figure(name: str, value: float, unit: str) -> None:
    """One figure for the harness's report (and this test's output)."""
    line = f"{name} = {value:.3f} {unit}" if isinstance(value, float) else f"{name} = {value} {unit}"
    print("FIGURE", line)
    with open(os.path.join(OUT, "figures.txt"), "a") as f:
        f.write(line + "\n")


@pytest.fixture
def timer() -> Iterator[type]:
    class Timer:
        def __enter__(self) -> Timer:
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc: object) -> None:
            self.seconds = time.perf_counter() - self.t0

    yield Timer
