"""Benchmarks: spark-scoring against the alternatives users would pick, and cost growth.

Run with `make bench` or `python -m bench.run [--quick]`; see bench/README.md.
"""
