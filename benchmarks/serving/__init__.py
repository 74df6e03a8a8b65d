"""The serving benchmark's parts; the entry point is benchmarks/bench_serving.py."""
