"""Admission with headroom: a submission is refused (503 ``store_full``) before it could fill the store.

Redis runs with ``maxmemory-policy noeviction`` (the only policy a queue may run on): once full it
refuses writes, and then no accepted job could record another outcome. So the intake keeps the
store under a watermark, ``STORE_ADMIT_WATERMARK`` (80%) of ``maxmemory`` (or of
``STORE_MAX_BYTES`` when Redis has no ``maxmemory``), counting what is in it now, what the jobs
already accepted will still write (their results: :data:`RESULT_BYTES_PER_ITEM` per pending item),
and what the new submission will need (:data:`BYTES_PER_BODY_BYTE` per byte of its body, inputs
and results together). The room above the watermark is the accepted jobs' own: **an accepted job
always finishes**, however full the store.

The check runs before the body is read (from ``Content-Length``), every chunk of items as they are
stored when the body comes without a length, and once more when the items are counted, before
the job is committed (its inputs are in Redis then, its results still to come); a refused
submission is removed whole, as any refused submission is.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.errors import STORE_FULL_RETRY_SECONDS, ApiError
from worker.store.jobstore import JobStore

#: Redis bytes a byte of a submission's body comes to, with its results, before its items are
#: counted: measured 595 B an item once accepted and 2,387 B once done for 350-byte profiles
#: (6.8 times the body), rounded up: an estimate that is too low costs an accepted job its room.
BYTES_PER_BODY_BYTE = 7.5
#: Redis bytes an item that has not ended yet will still write: its result (the customer as the
#: lookup answers it, measured at 1.8 KB) and its counters, rounded up.
RESULT_BYTES_PER_ITEM = 2000


@dataclass(frozen=True)
class Room:
    used: int
    limit: int  # 0: no limit known

    def left(self) -> int:
        return self.limit - self.used


class Admission:
    def __init__(self, store: JobStore, *, watermark: float, max_bytes: int) -> None:
        self.store = store
        self.watermark = watermark
        self.max_bytes = max_bytes

    def room(self) -> Room:
        """The store's bytes in use, with what accepted jobs will still write, and the watermark."""
        used, maxmemory = self.store.memory()
        budget = maxmemory or self.max_bytes
        if not budget:
            return Room(used, 0)
        return Room(used + self.store.pending_items() * RESULT_BYTES_PER_ITEM, int(budget * self.watermark))

    def check(self, *, body_bytes: int = 0, stored_items: int = 0) -> None:
        """Refuse the submission (503 store_full) if it would take the store past the watermark.

        ``body_bytes``: what the body still to be stored will need; ``stored_items``: items of it
        stored already, whose results are still to come (the room counts them as pending only
        once the job is committed)."""
        room = self.room()
        if not room.limit:
            return
        needed = int(body_bytes * BYTES_PER_BODY_BYTE) + stored_items * RESULT_BYTES_PER_ITEM
        if needed > room.left():
            raise ApiError(
                503, "store_full",
                f"the job store is near its memory limit ({room.used:,} of {room.limit:,} bytes in use or held "
                f"for accepted jobs, this submission needs about {needed:,}); accepted jobs go on, try again "
                "later, or in smaller batches",
                headers={"Retry-After": str(STORE_FULL_RETRY_SECONDS)})
