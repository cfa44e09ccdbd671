"""Tooling around the product, not part of it: the demo, the load generator,
the local cluster they and the tests start, and the benches."""
