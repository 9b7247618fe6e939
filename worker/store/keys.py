"""Every Redis key the service uses, in one place, with the rule for how long it lives.

A job's keys live as long as the job runs and expire ``JOB_TTL_SECONDS`` after it finishes
(:func:`job_keys` lists them for the end script); nothing of a running job expires, however
long it runs. Inputs stored before the job is committed expire within the hour unless the commit
comes (an intake that died half way leaves nothing behind). Keys of the scheduler and the fleet
are few and small; they live as long as the service does, or expire on their own (leader lock,
fleet heartbeat, identifier locks).

Job keys (``<j>`` is the job id, ``<n>`` the chunk number, ``index // CHUNK``; ``{job:<j>}`` is
the job's hash tag, so all its keys share a Redis Cluster slot)::

    cu:{job:<j>}            hash   the job document's fields, its counters, and the dispatch cursor
    cu:{job:<j>}:in:<n>     hash   the chunk's inputs, packed (worker/store/packing.py): "z:b" -> the
                                   elements of block b (BLOCK items, compressed), "f:b" -> the
                                   first lock digest of each of its items; per item "m:i" -> its
                                   memo across runs (attempt, reserved tokens, add in doubt; removed
                                   with its outcome), "n:i" -> the next item of its chain, "l:i" ->
                                   the leases that lapsed while it ran (the poison guard); and
                                   "meta" -> the job's tenant, total and options, "cancelled" -> "1"
                                   once cancelled, so a message's items read everything they need in
                                   one command (jobs stored by an earlier version: "i" -> input
                                   JSON and "k:i" -> lock digests per item, read as well)
    cu:{job:<j>}:res:<n>    hash   "i" -> the item's result (packed: compressed JSON), written once
    cu:{job:<j>}:failed     zset   indexes of failed items (score = index), for filtered paging
    cu:{job:<j>}:waits      set    indexes that wait for an earlier item of their chain
    cu:{job:<j>}:ready      list   chain successors whose predecessor has ended, to dispatch first
    cu:{job:<j>}:delayed    zset   items waiting to be retried (score = due time)
    cu:{job:<j>}:plan       hash   while a submission is read: identifier digest -> the first item that named
                                   it (worker/dispatch/planning.py); removed at the commit
    cu:{job:<j>}:dry        hash   a dry run's predictions for the later items of a chain: "i:<digest>" -> the
                                   customer an identifier would lead to (or gone), "c:<customer>" -> that
                                   customer as the earlier items would leave it (worker/items/dryrun.py)

Every script receives every key it touches in ``KEYS``, named here: no script builds a key name.
The dispatcher's scripts (worker/store/lua/take_items.lua, reap_leases.lua) serve many jobs at once
and receive each job's keys in turn; the lapsed leases are found first, so that the reaper can
name their keys (and their items' first locks) before its script runs.

Scheduler and fleet::

    cu:sched:jobs           zset   unfinished jobs (score = creation time): what the dispatcher serves
    cu:sched:due            zset   jobs with a chain successor or a retry to dispatch (score = when)
    cu:inflight             zset   "j:i:token" -> lease expiry, one per item queued or running
    cu:sched:leader         string the dispatching worker process, with a short expiry
    cu:cancels              channel a job's id, published once the job is cancelled (worker/store/cancels.py)
    cu:fleet                zset   worker process -> last heartbeat
    cu:fleet:slots          hash   worker process -> concurrency
    cu:callbacks            zset   finished jobs whose callback is due (score = next attempt), until it is
                                   delivered or given up; an attempt under way holds it a minute ahead
    cu:metrics              hash   the fleet's Prometheus counters: field = JSON array of the metric's
                                   name and label values, value = its count (worker/metrics.py); kept
                                   for the service's life, as Prometheus expects of a counter

Elsewhere: ``cu:tenant:{t}:jobs`` (zset of a tenant's job ids by creation time; trimmed of jobs
older than twice ``JOB_TTL_SECONDS`` at each commit and of expired jobs when listed, and expiring
twice ``JOB_TTL_SECONDS`` after the tenant's last commit or job end), ``cu:idem:{t}:{sha256}``
(Idempotency-Key claims: a minute unbound, then ``JOB_TTL_SECONDS``, restarted when the job ends),
``cu:tenant:{t}:active`` (its jobs not yet ended, left by the end script) and ``cu:tenant:{t}:accepted``
(its jobs of the last day with their sizes, trimmed as read, expiring a day after the last),
``cu:lock:{digest}`` (identifier locks, twice the item lease, renewed while held) and
``cu:ratelimit:{t}:...`` (token buckets, an hour), and ``cu:dev:stack`` (the ``customer-upsert dev``
stack that holds a shared database, expiring unless renewed; cli/devstack.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

PREFIX = "cu"
#: Items per input and result hash: no key, message or process ever holds a whole job.
CHUNK = 1000

INFLIGHT = f"{PREFIX}:inflight"
SCHED_JOBS = f"{PREFIX}:sched:jobs"
SCHED_DUE = f"{PREFIX}:sched:due"
LEADER = f"{PREFIX}:sched:leader"
FLEET = f"{PREFIX}:fleet"
FLEET_SLOTS = f"{PREFIX}:fleet:slots"
METRICS = f"{PREFIX}:metrics"
CALLBACKS = f"{PREFIX}:callbacks"
DEV_STACK = f"{PREFIX}:dev:stack"

#: Fields of an input chunk that are not items.
META_FIELD = "meta"
CANCELLED_FIELD = "cancelled"


#: A job's hash; every other key of the job is this and a suffix. The braces are the job's hash tag:
#: all of a job's keys hash to one slot (Redis Cluster), so a script that touches one job's keys only
#: never spans slots.
JOB_KEY_FORMAT = PREFIX + ":{job:%s}"


def job(job_id: str) -> str:
    return JOB_KEY_FORMAT % job_id


def chunk_number(index: int) -> int:
    return index // CHUNK


def inputs(job_id: str, index: int) -> str:
    return f"{job(job_id)}:in:{chunk_number(index)}"


def results(job_id: str, index: int) -> str:
    return f"{job(job_id)}:res:{chunk_number(index)}"


def failed(job_id: str) -> str:
    return f"{job(job_id)}:failed"


def waits(job_id: str) -> str:
    return f"{job(job_id)}:waits"


def ready(job_id: str) -> str:
    return f"{job(job_id)}:ready"


def delayed(job_id: str) -> str:
    return f"{job(job_id)}:delayed"


def plan(job_id: str) -> str:
    return f"{job(job_id)}:plan"


def dry(job_id: str) -> str:
    return f"{job(job_id)}:dry"


def chunks(total: int) -> range:
    return range((total + CHUNK - 1) // CHUNK)


def job_keys(job_id: str, total: int) -> list[str]:
    """Every key a job may own, to expire together when it finishes (or delete when refused)."""
    base = job(job_id)
    per_chunk = [f"{base}:{kind}:{n}" for n in chunks(total) for kind in ("in", "res")]
    return [base, failed(job_id), waits(job_id), ready(job_id), delayed(job_id), dry(job_id), plan(job_id),
            *per_chunk]


def tenant_jobs(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:jobs"


def tenant_active(tenant: str) -> str:
    """The tenant's jobs not yet ended (zset, score = creation): its concurrent-jobs quota."""
    return f"{PREFIX}:tenant:{tenant}:active"


def tenant_accepted(tenant: str) -> str:
    """The tenant's accepted jobs of the last day (zset of ``job:items``, score = acceptance): its
    items-per-day quota."""
    return f"{PREFIX}:tenant:{tenant}:accepted"


#: The window of the items-per-day quota.
DAY_SECONDS = 86_400


def idempotency(tenant: str, key: str) -> str:
    return f"{PREFIX}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


#: Every identifier lock is this prefix and a digest (see :func:`identifier_lock_digest`).
LOCK_PREFIX = f"{PREFIX}:lock:"


def identifier_lock_digest(tenant: str, source: str, account: str, kind: str, value: str) -> str:
    """A digest, not the identifier itself: lock keys must not spell out a mobile or an email."""
    raw = "\x1f".join((tenant, source, account, kind, value)).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def identifier_lock(tenant: str, source: str, account: str, kind: str, value: str) -> str:
    return LOCK_PREFIX + identifier_lock_digest(tenant, source, account, kind, value)


def inflight_member(job_id: str, index: int, token: str) -> str:
    return f"{job_id}:{index}:{token}"


def item_of(member: str) -> str:
    """``job:index:`` of a delivery ``job:index:token``: what every delivery of the same item shares."""
    return member.rsplit(":", 1)[0] + ":"


def parse_member(member: str) -> tuple[str, int, str]:
    job_id, index, token = member.split(":", 2)
    return job_id, int(index), token


def identifier_keys(element: Any) -> list[tuple[str, str, str, str]]:
    """(type, value, source, accountId) of each identifier an element names; [] for junk input. What an
    item's identifier locks are named after (:func:`identifier_lock`), and what the intake plans chains by."""
    if not isinstance(element, dict) or not isinstance(element.get("profiles"), list):
        return []
    found = []
    for profile in element["profiles"]:
        if not isinstance(profile, dict) or not isinstance(profile.get("identifiers"), list):
            continue
        source, account = str(profile.get("source") or ""), str(profile.get("accountId") or "")
        for ident in profile["identifiers"]:
            if isinstance(ident, dict) and ident.get("type") and ident.get("value"):
                found.append((str(ident["type"]), str(ident["value"]), source, account))
    return found
