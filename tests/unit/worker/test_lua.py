"""The Redis scripts of worker/store/lua/ and worker/downstream/lua/ as files: each says what it takes and
answers, each is run by a test against the unit Redis, and what two of them share is the same in both. The
scripts without a test of their own elsewhere (tests/unit/worker/test_jobstore.py, test_scheduler.py) are
tested here."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest

from tests.unit.worker.test_jobstore import new_job
from worker.dispatch.leases import LeaseKeeper
from worker.dispatch.scheduler import CALLBACK_HOLD_SECONDS, Dispatcher
from worker.downstream import ratelimit
from worker.lua_scripts import LUA_DIRS, source
from worker.settings import Settings
from worker.store import keys
from worker.store.jobstore import OUTCOME_COUNTERS

SCRIPTS = sorted(path.stem for folder in LUA_DIRS for path in folder.glob("*.lua"))
UNIT_TESTS = Path(__file__).resolve().parents[1]


def header(name: str) -> str:
    """The comment block a script opens with."""
    lines = []
    for line in source(name).splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def scripts_marked_in_tests() -> set[str]:
    """Every script named by a ``@pytest.mark.lua(...)`` of the unit layer (the marker's fixture,
    tests/unit/conftest.py, fails a test that does not run the scripts it names)."""
    named: set[str] = set()
    for path in UNIT_TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "lua"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "mark"):
                named.update(arg.value for arg in node.args if isinstance(arg, ast.Constant))
    return named


def test_the_scripts_are_where_the_package_ships_them():
    assert len(SCRIPTS) >= 14 and {"record_outcomes", "take_items", "take_token"} <= set(SCRIPTS)
    assert len(set(SCRIPTS)) == len(SCRIPTS), "a script's name is unique across the folders"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_opens_with_its_keys_argv_and_reply(name):
    text = header(name)
    assert text.startswith(f"-- {name}: "), "the header starts with the script's name and what it does"
    assert re.search(r"^-- KEYS", text, re.M), "the header names the script's KEYS"
    assert re.search(r"^-- ARGV", text, re.M), "the header names the script's ARGV"
    assert re.search(r"^-- Reply: ", text, re.M), "the header says what the script answers"


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_builds_a_key_name_all_come_in_keys(name):
    """Redis Cluster routes a script by its KEYS: a key built inside one would be out of its sight."""
    code = [line.split("--", 1)[0] for line in source(name).splitlines()]
    for line in code:
        assert "string.format" not in line and "'cu:" not in line, line
        assert not re.search(r"(KEYS\[[^]]*\]|\b\w*k)\s*\.\.", line), f"a key with something appended: {line}"


def test_every_script_is_run_by_a_test_that_names_it():
    assert set(SCRIPTS) - scripts_marked_in_tests() == set()


def lua_function(name: str, function: str) -> str:
    match = re.search(rf"^local function {function}\(.*?^end$", source(name), re.M | re.S)
    assert match, f"{name}.lua has no function {function}"
    return match.group(0)


RATE_SCRIPTS = ("take_token", "throttled", "pause_left")


def rate_constants(name: str) -> dict[str, float]:
    match = re.search(r"^local (TAU, [A-Z_, ]+) = ([0-9., ]+)$", source(name), re.M)
    assert match, f"{name}.lua has no line of the rates' constants"
    return dict(zip(match.group(1).split(", "), (float(v) for v in match.group(2).split(", ")), strict=True))


def test_the_three_copies_of_the_rates_shared_part_are_the_same_and_hold_the_limiters_constants():
    """A rate grows, is measured and counted alike whichever of the limiter's scripts looks at it."""
    for function in ("load", "put", "save", "count_sent", "sent_rate", "grown"):
        assert len({lua_function(name, function) for name in RATE_SCRIPTS}) == 1, function
    assert len({tuple(rate_constants(name).items()) for name in RATE_SCRIPTS}) == 1
    assert len({re.search(r"^local FIELDS = .*$", source(name), re.M).group(0) for name in RATE_SCRIPTS}) == 1
    assert rate_constants("take_token") == {
        "TAU": ratelimit.MEASURE_SECONDS, "GROWTH": ratelimit.SLOW_START_GROWTH, "INCREASE": ratelimit.INCREASE_SHARE,
        "PROBE": ratelimit.PROBE_SHARE, "HEADROOM": ratelimit.GROWTH_HEADROOM,
        "FOUND_HEADROOM": ratelimit.FOUND_GROWTH_HEADROOM}


@pytest.mark.parametrize("name", ["cancel_job", "end_job"])
def test_a_jobs_processed_items_are_summed_from_every_outcome_counter(name):
    """An item bumps exactly one of OUTCOME_COUNTERS: a counter missing here would keep a job from ending."""
    assert lua_function(name, "processed") == lua_function("cancel_job", "processed")
    assert tuple(re.findall(r"'(n\.\w+)'", lua_function(name, "processed"))) == OUTCOME_COUNTERS


# -- the scripts without a test elsewhere -----------------------------------------------------------

def leader(r, sent: list[str], worker: str = "w1") -> Dispatcher:
    return Dispatcher(r, Settings(item_lease_seconds=20.0), {}, worker=worker, publish=lambda deliveries: None,
                      end_lapsed=lambda lapsed: None, end_job=lambda job_id, tenant: None, send_callback=sent.append)


@pytest.mark.lua("fleet_slots")
def test_the_fleet_counts_the_slots_of_live_workers_and_forgets_silent_ones(r):
    LeaseKeeper(r, worker="w1", slots=3, lease_seconds=20).renew_once()
    LeaseKeeper(r, worker="w2", slots=5, lease_seconds=20).renew_once()
    d = leader(r, [])
    assert d.lead()
    d.slow_round()
    assert d.target() == 8 + 8  # both workers' threads, and as many queued

    r.zadd(keys.FLEET, {"w2": time.time() - 60})  # w2 stopped beating a lease ago
    d.slow_round()

    assert d.target() == 3 + 4  # and at least four queued
    assert r.hkeys(keys.FLEET_SLOTS) == ["w1"] and r.zrange(keys.FLEET, 0, -1) == ["w1"]


@pytest.mark.lua("due_callbacks")
def test_a_due_callback_is_queued_once_by_the_leader_and_held_ahead_while_it_is_tried(r):
    r.zadd(keys.CALLBACKS, {"due": 0, "later": time.time() + 3600})
    follower_sent: list[str] = []
    follower = leader(r, follower_sent, worker="w2")
    sent: list[str] = []
    d = leader(r, sent)
    assert d.lead()

    follower.queue_due_callbacks()  # it does not hold the leader's lock
    d.queue_due_callbacks()
    d.queue_due_callbacks()  # held ahead: not queued twice

    assert follower_sent == [] and sent == ["due"]
    assert r.zscore(keys.CALLBACKS, "due") > time.time() + CALLBACK_HOLD_SECONDS / 2


@pytest.mark.lua("callback_later")
def test_a_callback_tried_again_later_counts_its_attempts_and_a_done_one_stays_done(store, r):
    job_id, done_id = new_job(store, n=1), new_job(store, n=1)
    r.zadd(keys.CALLBACKS, {job_id: 0, done_id: 0})
    store.callback_done(done_id, 1, "delivered")

    store.callback_later(job_id, 2, 30)
    store.callback_later(done_id, 2, 30)

    assert time.time() + 20 < r.zscore(keys.CALLBACKS, job_id) < time.time() + 40
    assert r.hget(keys.job(job_id), "cb.attempts") == "2"
    assert r.zscore(keys.CALLBACKS, done_id) is None  # a delivered callback is not scheduled again
