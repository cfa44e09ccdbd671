"""Benchmarks behind `colo bench ...`: each against a baseline measured in
the same run, in interleaved rounds, through one harness (harness.py)."""
