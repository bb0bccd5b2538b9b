"""Benchmarks: saga-dispatch side by side with Parsl's HTEX and ThreadPoolExecutor in one run.

``uv run python -m bench`` (``--quick`` in CI). Results and commands go in docs/benchmarks.md.
"""
