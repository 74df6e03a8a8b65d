"""Peer servers of the serving benchmark, each serving the SavedModel with its own batching.

These files run only inside the benchmark's throw-away venv (see
`benchmarks/serving/peers.py`); nothing in the project imports them.
"""
