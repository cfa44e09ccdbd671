"""Shared by the Xen lab suite (tests/xen): the lab mode and the figures file."""

from __future__ import annotations

import os

MODE = os.environ.get("COLO_LAB_MODE", "")  # set by dom0-init inside the lab only
OUT = os.environ.get("COLO_LAB_OUT", "/tmp")


def figure(name: str, value: float, unit: str) -> None:
    """One figure for the harness's report (and this test's output)."""
    line = f"{name} = {value:.3f} {unit}" if isinstance(value, float) else f"{name} = {value} {unit}"
    print("FIGURE", line)
    with open(os.path.join(OUT, "figures.txt"), "a") as f:
        f.write(line + "\n")


def note(text: str) -> None:
    """One line of what a test saw, for the harness's report."""
    print(text)
    with open(os.path.join(OUT, "notes.txt"), "a") as f:
        f.write(" ".join(text.split()) + "\n")
