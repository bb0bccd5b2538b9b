"""Chaos testing: agents in Linux network namespaces, seeded faults, a DAG through Parsl, and checks.

``saga-dispatch chaos --seeds N`` runs N seeds and prints a table; ``tests/chaos`` runs a few in CI.
Needs root and ``ip netns``; everything it creates is torn down, and traffic stays on addresses
inside the namespaces it made and on loopback.
"""
