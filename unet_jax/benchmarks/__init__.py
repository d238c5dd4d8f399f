"""Benchmarks: speed numbers live here, never in timed tests."""
