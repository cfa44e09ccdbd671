"""Argument checks made in Python before a value reaches C."""

from __future__ import annotations


def u64(name: str, value: int) -> int:
    """value, if it is an int that fits a uint64_t; ValueError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer in 0..2^64-1, got {value!r}")
    return value


def timeout_ms(timeout: float | None) -> int:
    """None waits for ever (-1); otherwise whole milliseconds, at least 1."""
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
    return max(1, min(int(timeout * 1000), 2**31 - 1))
