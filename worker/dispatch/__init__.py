"""Dispatch: which items run when, and on which worker.

Owns the dispatcher (the leader's rounds, leases, leadership, reaping of lapsed leases), publishing
the items' messages, the intake's chain planning and a job's estimate.

May import: ``worker.store``, ``worker.downstream`` (the rate limits an estimate reads) and the
worker's shared modules (settings, clock, queues). Imports nothing of ``worker.items``: an item's
run uses dispatch, never the reverse (tests/unit/test_imports.py).
"""
