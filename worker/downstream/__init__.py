"""Downstream: talking to the v2 customer API.

Owns the client (``client``) and its HTTP transport (``transport``), the per-endpoint rate limits
(``ratelimit``, with the names of their Redis keys in ``keys``) and the retry policy (``retry``).

May import: the worker's settings and the standard library. Imports nothing of ``worker.store``,
``worker.dispatch`` or ``worker.items`` (tests/unit/test_imports.py).
"""
