"""The job store: everything the service keeps in Redis, and the scripts that change it.

Owns the key names (``keys``), the job store (``jobstore``: new jobs, item claims and outcomes, reads
and the job document), the Redis scripts (``lua/*.lua``, loaded by ``lua_scripts``), the metric
hash's field names and the store's health findings.

May import: the worker's shared modules (``clock``, ``redis_connection``), redis-py and the standard
library. Imports nothing of
``worker.dispatch``, ``worker.items`` or ``worker.downstream``: they build on the store, never the
reverse (tests/unit/test_imports.py).
"""
