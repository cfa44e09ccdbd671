"""Coordinator: the single authority over protected pairs."""
