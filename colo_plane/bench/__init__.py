"""Benchmarks behind `colo bench ...`: each prints a ratio against a
baseline measured in the same run."""
