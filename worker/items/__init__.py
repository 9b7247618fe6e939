"""Items: one item's run, from its claim to its outcome.

Owns the run of an item (``run``), the upsert steps against the downstream (``upsert``),
identifier locks, input validation, CSV rows, dry-run predictions and callbacks.

May import: ``worker.store``, ``worker.dispatch``, ``worker.downstream`` and the worker's shared
modules (settings, context, metrics, logs). Nothing of these imports ``worker.items``
(tests/unit/test_imports.py).
"""
