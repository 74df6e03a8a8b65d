"""Benchmarks: batch scoring (bench_scoring.py) and serving (bench_serving.py, serving/)."""
