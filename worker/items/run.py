"""One delivery of an item in the worker, without Celery: load, gate, upsert under its locks, record.

The task wrapper in :mod:`worker.tasks` only calls :func:`run_item`. Everything an item does in
Redis is fenced by its lease (see :mod:`worker.scheduler`): a delivery whose lease was taken away
records nothing.

Three kinds of "later", kept apart because only one of them is the item's fault; all three hand
the item back to the scheduler (``defer``), so a waiting item never holds a worker thread:

* a transient downstream failure (but 429): retried with exponential backoff and jitter, honouring
  Retry-After, and counted: after ``ITEM_MAX_ATTEMPTS`` the item fails (code 9001);
* no rate-limit token, a 429, or another job's item holding one of its identifiers: not counted,
  so waiting for a slow endpoint never fails an item;
* a worker dying under it: the lease lapses and the scheduler hands it out again, counted apart
  (code 9004 after :data:`worker.scheduler.MAX_LAPSES`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from worker.context import WorkerContext
from worker.dispatch.leases import LeaseLost
from worker.dispatch.planning import identifier_keys
from worker.dispatch.reaping import Lapsed
from worker.downstream import retry
from worker.downstream.client import DownstreamError, PermanentError, RetryableError, ThrottledError
from worker.downstream.ratelimit import SLEEP_UNDER_SECONDS, RateLimited
from worker.items.csvrows import locate, row_problem
from worker.items.dryrun import predict_customer
from worker.items.upsert import CANCELLED, FAILED, ItemOutcome, error, upsert_valid_customer
from worker.items.validation import validate_customer
from worker.logs import CURRENT, mask_value
from worker.metrics import RETRY_IDENTIFIERS_LOCKED, RETRY_RATE_LIMITED, RETRY_THROTTLED, RETRY_TRANSIENT
from worker.store import keys
from worker.store.jobstore import CANCELLED_MESSAGE, CODE_CANCELLED, ItemWork, JobMeta, JobStore, Outcome, Recorded
from worker.store.keys import inflight_member

log = logging.getLogger(__name__)

CODE_RETRIES_EXHAUSTED = 9001
CODE_DOWNSTREAM_REFUSED = 9003
CODE_REDELIVERED = 9004
CODE_UNKNOWN_TENANT = 9005
#: "Customer details not sent": a CSV row that is no customer at all (worker/items/csvrows.py)
CODE_BAD_ROW = 8084



@dataclass(frozen=True)
class ItemRun:
    """What one delivery did: ``summary`` is the task's result, shown by Flower in its task list, so it
    is short and starts with one word to search for: ``CREATED 500000123``, ``UPDATED 500000124``,
    ``CREATED 500000125 3017`` (written, with an error), ``FAILED 8045``, ``CANCELLED``,
    ``RETRY in 1.2s: <why>``, ``ABANDONED: lease lost``."""

    summary: str


class StoreJournal:
    """The item's memory across runs (worker/items/upsert.py's Journal), kept in its memo.

    The memo travels in the item's input chunk: read with the input, written back when the item
    is deferred, and written at once only where a crash must not lose it: before an add, whose
    answer may never arrive.
    """

    def __init__(self, store: JobStore, member: str, job_id: str, index: int, memo: dict[str, Any]) -> None:
        self.store, self.member, self.job_id, self.index, self.memo = store, member, job_id, index, memo
        #: Whether this run stored the memo (the item's outcome then removes it)
        self.stored = False

    def created_id(self) -> int | None:
        created = self.memo.get("c")
        return int(created) if created is not None else None

    def record_created(self, user_id: int) -> None:
        self.memo["c"] = int(user_id)
        self.memo.pop("d", None)

    def add_in_doubt(self) -> bool:
        return bool(self.memo.get("d"))

    def mark_add_in_doubt(self) -> None:
        """Written before an add goes out, as it goes out: the lease keeper has just found the lease
        standing (the client's gate, before every call), so a stale delivery has stopped before this."""
        self.memo.pop("c", None)
        self.memo.pop("l", None)
        self.memo["d"] = 1
        self.store.save_memo(self.job_id, self.index, self.memo)
        self.stored = True

    def looked_up(self) -> tuple[bool, dict | None]:
        if "l" not in self.memo:
            return False, None
        return True, self.memo["l"] or None

    def record_lookup(self, found: dict | None) -> None:
        # Saved only with a deferral that keeps the item's locks (_defer); a run that ends otherwise
        # leaves no trace of it.
        self.memo["l"] = found or {}


class StorePredictionState:
    """A dry run's prediction state (worker/items/dryrun.py), in the job store."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id

    def read(self, names: list[str]) -> list[Any]:
        return self.store.dry_state(self.job_id, names)

    def write(self, fields: dict[str, Any]) -> None:
        self.store.save_dry_state(self.job_id, fields)


def message_members(job_id: str, index: int | list[int], token: str) -> list[str]:
    """The leases (``job:index:token``) of one message's items."""
    indexes = [index] if isinstance(index, int) else index
    return [inflight_member(job_id, i, token) for i in indexes]


@dataclass(frozen=True)
class _Ran:
    """An item that ran to its outcome, to be recorded with the rest of its message."""

    work: ItemWork
    index: int
    member: str
    outcome: ItemOutcome
    locks: list[str]
    #: Whether the item has a memo stored, which its record removes
    memo: bool


def run_items(ctx: WorkerContext, job_id: str, indexes: list[int], token: str,
              guard: Callable[[Callable[[], Any]], Any] | None = None) -> list[ItemRun]:
    """A message's items (worker/dispatch/scheduler.py): read together, run one after another (each
    through ``guard``), and their outcomes recorded together once the last has run.

    Every item's lease is kept alive by the keeper from the start until its outcome is recorded (or
    it went back to the scheduler), so a slow first item never lets the others lapse and run a
    second time elsewhere, and an item waiting for its message's record keeps its lease and locks.
    Should the worker die before the record, the items' leases lapse and they run again: an add
    already made is then known by the memo written before it (worker/items/upsert.py's Journal).
    """
    guarded: Callable[[Callable[[], Any]], Any] = guard or (lambda work: work())
    lease = ctx.settings.item_lease_seconds
    members = [inflight_member(job_id, index, token) for index in indexes]
    for member in members[1:]:
        ctx.keeper.hold(member, [])
    runs: dict[int, ItemRun] = {}
    ran: list[tuple[int, _Ran]] = []

    def record() -> None:
        recorded = guarded(lambda: _record_all(ctx, job_id, [r for _, r in ran]))
        runs.update({position: run for (position, _), run in zip(ran, recorded, strict=True)})
        ran.clear()

    try:
        read_at = time.monotonic()  # taken before the read: a cancel heard after it may be older
        claimed = guarded(lambda: ctx.store.claim_items(job_id, indexes, token, lease))
        for position, (index, member) in enumerate(zip(indexes, members, strict=True)):
            # An item with others behind it never sleeps for a write token: it goes back to the
            # scheduler holding it, so an add that waits never holds back an update behind it.
            tries = [claimed[position]]

            def run(index: int = index, member: str = member, last: bool = position == len(indexes) - 1,
                    first: bool = position == 0, tries: list[ItemWork] = tries) -> ItemRun | _Ran:
                # Run again after a store outage: read again, as the first run may have written its memo.
                work = tries.pop() if tries else ctx.store.claim_items(job_id, [index], token, lease)[0]
                if not first and not work.cancelled and work.meta is not None:
                    # The message was read before the items ahead of this one ran: a cancel since
                    # then must still end this one, which has not started, CANCELLED. The process's
                    # cancel watch knows, unless it missed some (worker/store/cancels.py).
                    heard = ctx.cancels.cancelled(job_id, read_at)
                    work = replace(work, cancelled=heard if heard is not None
                                   else ctx.store.cancelled_since(job_id, index))
                with _current(job_id, index):
                    return _run_claimed(ctx, work, job_id, index, member, last)
            try:
                result = guarded(run)
            except BaseException:
                if ran:  # what the items before it did stands: recorded before the error goes on
                    record()
                raise
            if isinstance(result, _Ran):
                ran.append((position, result))
            else:
                runs[position] = result
                ctx.keeper.drop(member)
        if ran:
            record()
    finally:
        for member in members:
            ctx.keeper.drop(member)
    return [runs.get(position, ItemRun("ABANDONED: not run")) for position in range(len(indexes))]


def run_item(ctx: WorkerContext, job_id: str, index: int, token: str) -> ItemRun:
    """A message of one item."""
    return run_items(ctx, job_id, [index], token)[0]


@contextmanager
def _current(job_id: str, index: int) -> Iterator[None]:
    """The item this thread works on, for the log lines it writes (worker/logs.py)."""
    token_ = CURRENT.set((job_id, index))
    try:
        yield
    finally:
        CURRENT.reset(token_)


def _run_claimed(ctx: WorkerContext, work: ItemWork, job_id: str, index: int, member: str,
                 last_in_message: bool = True) -> ItemRun | _Ran:
    """Gate, then upsert under the item's locks: each a function of its own below. Answers the outcome
    to record, or how the run ended without one (deferred, lease lost, job gone)."""
    if work.stale:
        log.warning("job %s item %s: lease lost to another worker before the item started here; leaving it "
                    "to that worker", job_id, index)
        return ItemRun("ABANDONED: lease lost")
    if work.meta is None:
        log.warning("job %s is gone; dropping item %s", job_id, index)
        return ItemRun("SKIPPED: the job is gone")
    outcome = _gate(ctx, work, work.meta)
    if outcome is not None:
        return _Ran(work, index, member, outcome, [], bool(work.memo))
    return _run_under_locks(ctx, work, work.meta, job_id, index, member, last_in_message)


def _gate(ctx: WorkerContext, work: ItemWork, meta: JobMeta) -> ItemOutcome | None:
    """The outcomes that need no downstream call and no lock: cancelled, broken, invalid."""
    if work.cancelled:
        return ItemOutcome(CANCELLED, errors=[error(CODE_CANCELLED, CANCELLED_MESSAGE)])
    if work.element is None:
        return ItemOutcome(FAILED, errors=[error(10000, "the item's input is missing from the job store")])
    if meta.tenant not in ctx.tenants:
        return ItemOutcome(FAILED, errors=[error(
            CODE_UNKNOWN_TENANT, f"this worker has no settings for tenant {meta.tenant!r}; "
                                 "check UPSERT_TENANTS_FILE on every worker")])
    problem = row_problem(work.element) if meta.csv else None
    if problem:
        return ItemOutcome(FAILED, errors=[error(CODE_BAD_ROW, problem)])
    problems = validate_customer(work.element)
    if problems:
        return ItemOutcome(FAILED, errors=problems)
    return None


def _run_under_locks(ctx: WorkerContext, work: ItemWork, meta: JobMeta, job_id: str, index: int,
                     member: str, last_in_message: bool = True) -> _Ran | ItemRun:
    """Take the item's identifier locks, upsert, and decide what a failure means (worker/downstream/retry.py).
    Answers the outcome and the locks held, or the run's end when the item went back to the scheduler.
    The lease keeper keeps the lease and the locks alive until the message's caller lets them go."""
    memo = dict(work.memo)
    if meta.dry_run:  # reads only: nothing to guard, and no real job's item may wait for a dry run
        locks, locked = [], True
    else:
        locks = ctx.locks.keys(meta.tenant, identifier_keys(work.element))
        try:
            ctx.keeper.check(member)  # no lock is taken for a delivery whose lease is gone
        except LeaseLost:
            log.warning("job %s item %s: lease lost to another worker before the item started here; leaving "
                        "it to that worker", job_id, index)
            return ItemRun("ABANDONED: lease lost")
        locked = ctx.locks.acquire(locks, member)
    if not locked:
        delay = retry.identifiers_locked_delay()
        return _defer(ctx, job_id, index, member, delay, memo, [], RETRY_IDENTIFIERS_LOCKED,
                      f"RETRY in {delay:.1f}s: identifiers held by another job's item")
    ctx.keeper.hold(member, locks)
    client, limiter = ctx.client_for(meta.tenant)
    reserved = {k: [reservation(t) for t in v] for k, v in (memo.get("r") or {}).items() if isinstance(v, list)}
    journal = StoreJournal(ctx.store, member, job_id, index, memo)
    policy = retry.RetryPolicy.from_settings(ctx.settings)
    attempt = int(memo.get("a") or 1)

    def gate(endpoint: str) -> None:
        # Checked again after the limiter, which may have slept: the call goes out only while the
        # lease is known to stand (a frozen worker that wakes up finds it presumed lost).
        ctx.keeper.check(member)
        limiter.acquire(endpoint, reserved, sleep_under=SLEEP_UNDER_SECONDS if last_in_message else 0.0)
        ctx.keeper.check(member)

    def later(delay: float, reason: str, why: str) -> ItemRun:
        return _defer(ctx, job_id, index, member, delay, memo, locks, reason, f"RETRY in {delay:.1f}s: {why}",
                      journal)

    gated = client.with_gate(gate, lambda: ctx.keeper.check(member))
    started = time.monotonic()

    def ran(outcome: ItemOutcome) -> _Ran:
        return _Ran(work, index, member, outcome, locks, bool(work.memo) or journal.stored)

    try:
        if meta.dry_run:
            outcome = predict_customer(gated, work.element, index=index, tenant=meta.tenant,
                                       skip_change_identifier=meta.skip_change_identifier,
                                       priority=ctx.settings.identifier_priority,
                                       state=StorePredictionState(ctx.store, job_id),
                                       has_successor=work.successor is not None)
        else:
            outcome = upsert_valid_customer(gated, work.element, skip_change_identifier=meta.skip_change_identifier,
                                            priority=ctx.settings.identifier_priority, journal=journal)
        return ran(outcome)
    except LeaseLost:
        log.warning("job %s item %s: lease lost to another worker; leaving the item to it", job_id, index)
        return ItemRun("ABANDONED: lease lost")
    except RateLimited as exc:
        memo["r"] = {k: [list(t) for t in v] for k, v in reserved.items() if v}
        if exc.reserved:
            memo["r"][exc.endpoint] = [*memo["r"].get(exc.endpoint, []), [exc.due, exc.epoch]]
        # Back early enough to redo what this run did before it asked (its lookups), so the token is
        # not missed.
        return later(retry.rate_limited_delay(exc.wait, reserved=exc.reserved, ahead=time.monotonic() - started),
                     RETRY_RATE_LIMITED, f"rate limit ({exc.endpoint})")
    except ThrottledError as exc:
        return later(retry.throttled_delay(exc.retry_after), RETRY_THROTTLED, "throttled (429)")
    except RetryableError as exc:
        if policy.gives_up_after(attempt):
            return ran(ItemOutcome(FAILED, errors=[gave_up_error(exc, attempt)]))
        memo["a"] = attempt + 1
        delay = policy.backoff(attempt, exc.retry_after)
        log.info("job %s item %s attempt %s failed (%s); retrying in %.1fs", job_id, index, attempt, exc.message,
                 delay)
        return later(delay, RETRY_TRANSIENT, exc.message)
    except PermanentError as exc:
        return ran(ItemOutcome(FAILED, errors=[error(exc.code or exc.status or CODE_DOWNSTREAM_REFUSED,
                                                     exc.message)]))


def reservation(stored: Any) -> tuple[float, int]:
    """A reserved token as the memo keeps it: ``[due, epoch]``, or only its due time as stored before
    rates were learned (epoch 0, the first)."""
    if isinstance(stored, list):
        return float(stored[0]), int(stored[1])
    return float(stored), 0


def _defer(ctx: WorkerContext, job_id: str, index: int, member: str, delay: float, memo: dict,
           locks: list[str], reason: str, summary: str, journal: StoreJournal | None = None) -> ItemRun:
    """Hand the item back to the scheduler for ``delay`` seconds; ``reason`` is the metric's label.

    While an add may have landed without our hearing of it, the item keeps its identifier locks:
    no other job's item may create or claim that customer before this item has looked again. It keeps
    them too when it has looked its customer up and waits only for its write's turn (a rate-limit
    token), so that its next run writes without looking again (worker/items/upsert.py, ``looked_up``).
    """
    keep = journal is not None and (journal.add_in_doubt()
                                    or (journal.looked_up()[0] and reason == RETRY_RATE_LIMITED))
    if not keep:
        memo.pop("l", None)
    ctx.keeper.settling([member])
    answer = ctx.store.defer(member, job_id, index, delay=delay, memo=memo, locks=locks, keep_locks=keep,
                             lock_ttl_ms=int((delay + ctx.settings.item_lease_seconds * 2) * 1000))
    if answer == 0:  # cancelled meanwhile: the item ends here, as cancelled
        outcome = ItemOutcome(CANCELLED, errors=[error(CODE_CANCELLED, "the job was cancelled while this item "
                                                                       "waited to be retried")])
        work = ctx.store.load_item(job_id, index)
        return _record(ctx, work, job_id, index, member, outcome, locks)
    if answer == -1:
        log.warning("job %s item %s: lease lost to another worker; not retrying it here", job_id, index)
        return ItemRun("ABANDONED: lease lost")
    ctx.metrics.retry(reason)
    return ItemRun(summary)


def _record(ctx: WorkerContext, work: ItemWork, job_id: str, index: int, member: str,
            outcome: ItemOutcome, locks: list[str]) -> ItemRun:
    """Record one item's outcome at once (a deferred item cancelled meanwhile, a lapsed one ended)."""
    return _record_all(ctx, job_id, [_Ran(work, index, member, outcome, locks, bool(work.memo))])[0]


def _record_all(ctx: WorkerContext, job_id: str, ran: list[_Ran]) -> list[ItemRun]:
    """Record the outcomes of a message's items in one step; then count and log each recorded one."""
    items = [_result_item(r) for r in ran]
    ctx.keeper.settling([r.member for r in ran])
    recorded = ctx.store.record_outcomes(job_id, [
        Outcome(r.member, r.index, item, r.outcome.failed, r.work.successor, r.locks, r.memo)
        for r, item in zip(ran, items, strict=True)])
    runs = []
    for r, item, done in zip(ran, items, recorded, strict=True):
        with _current(job_id, r.index):
            runs.append(_after_record(ctx, r, item, done))
    return runs


def _result_item(ran: _Ran) -> dict:
    item = ran.outcome.as_item(ran.index)
    if ran.outcome.failed:
        item["input"] = ran.work.element  # so the failed export can be resubmitted as it is
        if ran.work.meta is not None and ran.work.meta.csv:
            item["errors"] = locate(item["errors"], ran.work.element, ran.index)
    return item


def _after_record(ctx: WorkerContext, ran: _Ran, item: dict, done: Recorded) -> ItemRun:
    outcome, work = ran.outcome, ran.work
    if not done.recorded:
        if done.lease_lost:
            log.warning("job %s item %s: lease lost to another worker; this run's outcome is not recorded",
                        keys.parse_member(ran.member)[0], ran.index)
            return ItemRun("ABANDONED: lease lost")
        return ItemRun("DUPLICATE: recorded already")
    ctx.metrics.item(work.meta.tenant if work.meta else "", outcome.action, outcome.failed)
    if log.isEnabledFor(logging.INFO):  # its arguments cost more than the check: built only for a line written
        log.info("item %s entity=%s identifiers=[%s]%s", outcome.action, outcome.entity_id,
                 _masked_identifiers(work.element),
                 "".join(f" error {e.get('code')}: {e.get('message')}" for e in item["errors"]))
    return ItemRun(outcome_summary(outcome))


def end_lapsed(ctx: WorkerContext, lapsed: Lapsed) -> None:
    """Record an item whose lease lapsed and that must not run again: its job was cancelled, or
    workers died under it too often."""
    job_id, index, _token = lapsed.member.split(":", 2)
    index_ = int(index)
    work = ctx.store.load_item(job_id, index_)
    if lapsed.state == "CANCELLED":
        outcome = ItemOutcome(CANCELLED, errors=[error(CODE_CANCELLED, CANCELLED_MESSAGE)])
    else:
        log.error("job %s item %s: %s workers stopped under it; giving it up", job_id, index_, lapsed.lapses)
        outcome = ItemOutcome(FAILED, errors=[error(
            CODE_REDELIVERED, f"the item was taken {lapsed.lapses} times by workers that stopped before finishing it")])
    _record(ctx, work, job_id, index_, lapsed.member, outcome, [])


def outcome_summary(outcome: ItemOutcome) -> str:
    """``CREATED 500000123``, ``CREATED 500000123 3017`` (partly applied), ``FAILED 8045``, ``CANCELLED``."""
    if outcome.action == CANCELLED:
        return CANCELLED
    codes = [str(e.get("code")) for e in outcome.errors[:3]]
    if outcome.action == FAILED:
        return " ".join(["FAILED", *codes])
    if outcome.entity_id is None:  # a dry run's WOULD_CREATE
        return outcome.action
    return " ".join([outcome.action, str(outcome.entity_id), *codes])


def _masked_identifiers(element) -> str:
    return ", ".join(f"{kind}={mask_value(value)}" for kind, value, _s, _a in identifier_keys(element))


def gave_up_error(exc: DownstreamError, attempts: int) -> dict:
    status = f"HTTP {exc.status}" if exc.status else "no HTTP answer"
    return error(
        CODE_RETRIES_EXHAUSTED,
        f"gave up after {attempts} attempts on transient downstream failures; last: {exc.message} ({status})",
    ) | {"lastStatus": exc.status, "attempts": attempts}
