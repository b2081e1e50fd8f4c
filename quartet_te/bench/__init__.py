"""Benchmarks: `python -m quartet_te.bench.<name>`."""
