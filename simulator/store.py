"""SQLite store of customers and their identifiers.

One connection, guarded by one lock, serves all request threads: SQLite serialises writers anyway and this
keeps every read-check-write sequence atomic. The partial UNIQUE index on (source, account_id, type, value) is the
backstop that makes a duplicate identifier impossible even if a code path forgot to check first; it covers every
identifier but the ``shared`` ones, the secondary identifiers of dual eligibility (docs/capillary-v2.md §1.7),
which several customers may hold. Methods that write take ``primary``: the org's primary identifier type under dual
eligibility, ``None`` when every identifier is unique.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

FIRST_CUSTOMER_ID = 100_000_001

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    account_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    modified_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS identifiers (
    customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    account_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    shared INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS identifiers_unique ON identifiers (source, account_id, type, value)
    WHERE shared = 0;
CREATE INDEX IF NOT EXISTS identifiers_by_value ON identifiers (type, value);
CREATE INDEX IF NOT EXISTS identifiers_by_customer ON identifiers (customer_id);
"""


class IdentifierTaken(Exception):
    """An identifier already belongs to ``owner_id`` in the same source and account."""

    def __init__(self, owner_id: int, identifier: dict[str, Any]) -> None:
        super().__init__(f"{identifier['type']} already belongs to customer {owner_id}")
        self.owner_id = owner_id
        self.identifier = identifier


@dataclass
class Customer:
    id: int
    source: str
    account_id: str
    doc: dict[str, Any]
    identifiers: list[dict[str, Any]]
    created_at: str
    modified_at: str
    created_by: str
    modified_by: str


@dataclass
class IdentifierChange:
    """Outcome of :meth:`Store.change_identifiers`."""

    already_attached: list[dict[str, Any]] = field(default_factory=list)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self, path: str = ":memory:") -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        # A commit appends to the write-ahead log and is not synced to disk: a killed simulator loses
        # nothing, a crashed machine may lose the last commits. Synced commits cost a tenth of its CPU.
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._db.executescript(SCHEMA)
            self._db.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'customers', ? "
                "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'customers')",
                (FIRST_CUSTOMER_ID - 1,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reset(self) -> None:
        """Delete every customer; ids keep counting up so an id from before a reset is never reused."""
        with self._transaction():
            self._db.execute("DELETE FROM identifiers")
            self._db.execute("DELETE FROM customers")

    def find(self, source: str | None, account_id: str, id_type: str, value: str) -> Customer | None:
        """Find the customer holding an identifier; ``source=None`` searches every source and account."""
        with self._lock:
            if source is None:
                row = self._db.execute(
                    "SELECT customer_id FROM identifiers WHERE type = ? AND value = ? "
                    "ORDER BY customer_id LIMIT 1",
                    (id_type, value),
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT customer_id FROM identifiers "
                    "WHERE source = ? AND account_id = ? AND type = ? AND value = ? ORDER BY customer_id LIMIT 1",
                    (source, account_id, id_type, value),
                ).fetchone()
            return self._load(row["customer_id"]) if row else None

    def held_elsewhere(self, source: str, account_id: str, id_type: str, value: str) -> bool:
        """Whether a customer of another source or account holds the identifier."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM identifiers WHERE type = ? AND value = ? AND NOT (source = ? AND account_id = ?) "
                "LIMIT 1",
                (id_type, value, source, account_id),
            ).fetchone()
            return row is not None

    def get(self, customer_id: int) -> Customer | None:
        with self._lock:
            return self._load(customer_id)

    def all(self) -> list[Customer]:
        with self._lock:
            ids = [row["id"] for row in self._db.execute("SELECT id FROM customers ORDER BY id")]
            return [customer for customer in map(self._load, ids) if customer is not None]

    def add(
        self,
        source: str,
        account_id: str,
        identifiers: list[dict[str, Any]],
        doc: dict[str, Any],
        actor: str,
        primary: str | None = None,
    ) -> int:
        """Insert a customer with its identifiers; raise :class:`IdentifierTaken` if a unique one is used."""
        stamp = now_iso()
        with self._transaction():
            for identifier in identifiers:
                owner = self._owner(source, account_id, identifier)
                if owner is not None and not _shared(identifier, primary):
                    raise IdentifierTaken(owner, identifier)
            cursor = self._db.execute(
                "INSERT INTO customers "
                "(source, account_id, doc, created_at, modified_at, created_by, modified_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source, account_id, json.dumps(doc), stamp, stamp, actor, actor),
            )
            customer_id = cursor.lastrowid
            assert customer_id is not None  # an INSERT into a rowid table always has one
            self._insert_identifiers(customer_id, source, account_id, identifiers, primary)
            return customer_id

    def update(
        self, customer_id: int, change: Callable[[Customer], dict[str, Any]], actor: str
    ) -> Customer | None:
        """Replace a customer's document with ``change(customer)``; None if the customer does not exist.

        ``change`` runs under the lock and may raise to abort without writing anything.
        """
        with self._transaction():
            customer = self._load(customer_id)
            if customer is None:
                return None
            doc = change(customer)
            self._db.execute(
                "UPDATE customers SET doc = ?, modified_at = ?, modified_by = ? WHERE id = ?",
                (json.dumps(doc), now_iso(), actor, customer_id),
            )
            return self._load(customer_id)

    def change_identifiers(
        self,
        customer: Customer,
        add: Iterable[dict[str, Any]],
        remove: Iterable[dict[str, Any]],
        actor: str,
        primary: str | None = None,
    ) -> IdentifierChange:
        """Remove then add identifiers in one transaction; raise :class:`IdentifierTaken` if an added unique one
        belongs to another customer in the same source and account (nothing is changed then)."""
        outcome = IdentifierChange()
        with self._transaction():
            for identifier in remove:
                self._db.execute(
                    "DELETE FROM identifiers WHERE customer_id = ? AND type = ? AND value = ?",
                    (customer.id, identifier["type"], identifier["value"]),
                )
            fresh: list[dict[str, Any]] = []
            for identifier in add:
                owner = self._owner(customer.source, customer.account_id, identifier)
                if self._holds(customer.id, identifier):
                    outcome.already_attached.append(identifier)
                elif owner is not None and not _shared(identifier, primary):
                    raise IdentifierTaken(owner, identifier)
                elif all((i["type"], i["value"]) != (identifier["type"], identifier["value"]) for i in fresh):
                    fresh.append(identifier)
            self._insert_identifiers(customer.id, customer.source, customer.account_id, fresh, primary)
            self._db.execute(
                "UPDATE customers SET modified_at = ?, modified_by = ? WHERE id = ?",
                (now_iso(), actor, customer.id),
            )
        return outcome

    def _transaction(self):
        return _Transaction(self._lock, self._db)

    def _owner(self, source: str, account_id: str, identifier: dict[str, Any]) -> int | None:
        """The customer holding a unique (not shared) identifier in the source and account."""
        row = self._db.execute(
            "SELECT customer_id FROM identifiers "
            "WHERE source = ? AND account_id = ? AND type = ? AND value = ? AND shared = 0",
            (source, account_id, identifier["type"], identifier["value"]),
        ).fetchone()
        return row["customer_id"] if row else None

    def _holds(self, customer_id: int, identifier: dict[str, Any]) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM identifiers WHERE customer_id = ? AND type = ? AND value = ?",
            (customer_id, identifier["type"], identifier["value"]),
        ).fetchone()
        return row is not None

    def _insert_identifiers(
        self,
        customer_id: int,
        source: str,
        account_id: str,
        identifiers: Iterable[dict[str, Any]],
        primary: str | None,
    ) -> None:
        for identifier in identifiers:
            extra = {k: v for k, v in identifier.items() if k not in ("type", "value")}
            try:
                self._db.execute(
                    "INSERT INTO identifiers (customer_id, source, account_id, type, value, extra, shared) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        customer_id,
                        source,
                        account_id,
                        identifier["type"],
                        identifier["value"],
                        json.dumps(extra),
                        int(_shared(identifier, primary)),
                    ),
                )
            except sqlite3.IntegrityError:
                owner = self._owner(source, account_id, identifier)
                raise IdentifierTaken(owner if owner is not None else customer_id, identifier) from None

    def _load(self, customer_id: int) -> Customer | None:
        row = self._db.execute("SELECT * FROM customers WHERE id = ?", (customer_id,)).fetchone()
        if row is None:
            return None
        identifiers = [
            {"type": r["type"], "value": r["value"], **json.loads(r["extra"])}
            for r in self._db.execute(
                "SELECT type, value, extra FROM identifiers WHERE customer_id = ? ORDER BY rowid",
                (customer_id,),
            )
        ]
        return Customer(
            id=row["id"],
            source=row["source"],
            account_id=row["account_id"],
            doc=json.loads(row["doc"]),
            identifiers=identifiers,
            created_at=row["created_at"],
            modified_at=row["modified_at"],
            created_by=row["created_by"],
            modified_by=row["modified_by"],
        )


def _shared(identifier: dict[str, Any], primary: str | None) -> bool:
    """Under dual eligibility every identifier but the primary may be held by several customers."""
    return primary is not None and identifier["type"] != primary


class _Transaction:
    """Hold the store lock and wrap the block in BEGIN IMMEDIATE ... COMMIT, rolling back on any exception."""

    def __init__(self, lock: threading.Lock, db: sqlite3.Connection) -> None:
        self._lock = lock
        self._db = db

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
