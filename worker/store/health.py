"""Is this Redis fit to hold accepted jobs? The checks the web and the worker log at start, that
``/readyz`` and ``customer-upsert doctor`` show, and ``/metrics`` counts.

What a queue's store needs (the README's "Redis in production"):

* ``maxmemory-policy noeviction``: any eviction policy may drop a running job's keys without a word;
* persistence: the append-only file, or a replica, or a restart forgets every accepted job;
* Redis 6.2 or newer: the scripts use ``ZADD ... LT``, ``LPOP key count`` and ``GETDEL``-era commands;
* memory in hand: ``maxmemory`` set, so the intake's admission can keep room for accepted jobs.

A managed Redis may refuse ``CONFIG GET``; then the policy is reported unknown, not unsafe.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

MIN_VERSION = (6, 2)


@dataclass(frozen=True)
class Finding:
    """One check: ``reason`` is a short label (the metric's), ``message`` says what to do."""

    reason: str
    message: str


def store_findings(client: redis.Redis) -> list[Finding]:
    """What is unsafe about this store, or unknown; empty when it is fit. Raises RedisError when it is
    unreachable."""
    findings: list[Finding] = []
    info = client.info()
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2] if p.isdigit())
    if version < MIN_VERSION:
        needed = ".".join(map(str, MIN_VERSION))
        findings.append(Finding("old_version", f"Redis {info.get('redis_version')} is older than {needed}, "
                                               "which the job store's scripts need"))
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:  # CONFIG is disabled on some managed services
        policy = None
        findings.append(Finding("policy_unknown", "cannot read maxmemory-policy (CONFIG GET refused): make sure it "
                                                  "is noeviction"))
    if policy is not None and policy != "noeviction":
        findings.append(Finding("eviction", f"maxmemory-policy is {policy}: Redis may evict the keys of running "
                                            "jobs without a word; set maxmemory-policy noeviction"))
    if not int(info.get("aof_enabled", 0)) and not int(info.get("connected_slaves", 0)):
        findings.append(Finding("no_persistence", "neither the append-only file nor a replica protects accepted "
                                                  "jobs: a restart forgets them all; set appendonly yes "
                                                  "(appendfsync everysec)"))
    if not int(info.get("maxmemory", 0)):
        findings.append(Finding("no_maxmemory", "maxmemory is not set: the intake cannot keep room for accepted "
                                                "jobs unless STORE_MAX_BYTES is set; set maxmemory"))
    return findings


def store_summary(client: redis.Redis) -> dict:
    """What ``/readyz`` reports of the store: version, memory, persistence, and the findings."""
    info = client.info()
    return {
        "version": info.get("redis_version"),
        "usedMemory": int(info.get("used_memory", 0)),
        "maxMemory": int(info.get("maxmemory", 0)),
        "appendOnly": bool(int(info.get("aof_enabled", 0))),
        "replicas": int(info.get("connected_slaves", 0)),
        "warnings": [{"reason": f.reason, "message": f.message} for f in store_findings(client)],
    }
