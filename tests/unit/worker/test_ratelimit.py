"""The limiter's scripts against a real Redis: the all-endpoints limit is strict per window, a 429's
pause holds for every call (reserved tokens too), and due times are on Redis's clock."""

from __future__ import annotations

import threading
import time

import pytest

from worker.downstream import ratelimit
from worker.downstream.ratelimit import (
    CLIMB_HORIZON_SECONDS,
    CUT_SHARE,
    INCREASE_SHARE,
    MEASURE_SECONDS,
    PROBE_SHARE,
    SLOW_START_GROWTH,
    Learning,
    RateLimited,
    RateLimiter,
    learned_rates,
    learning_of,
    window,
)
from worker.settings import Settings, SettingsError

#: Only the configured limits, as they are: for the all-endpoints limit's own tests.
PINNED = Learning(enabled=False)


def grants(limiter: RateLimiter, endpoint: str, count: int, *, within_horizon: bool = True) -> list[float]:
    """Ask for ``count`` tokens at once, as many threads would; answer when each may be used (Redis time)."""
    times = []
    n, w = limiter._window or (0, 0.0)
    learning = limiter.learning
    for i in range(count):
        keys = [limiter.pause_key, limiter.endpoint_pause_key(endpoint), limiter.aims_key,
                limiter.log_key if limiter._window else limiter.aims_key]
        args = [limiter.horizon, n, w, f"call-{i}", int(learning.enabled), learning.start_per_minute(endpoint) / 60,
                SLOW_START_GROWTH, INCREASE_SHARE, PROBE_SHARE, MEASURE_SECONDS, learning.memory_seconds,
                CLIMB_HORIZON_SECONDS]
        bucket = limiter._endpoints.get(endpoint)
        if bucket:
            keys.append(bucket[0])
            args += [bucket[1], 0.5, 0, 0, 0]  # no spares: one token a call
        wait, now, *_rest = (float(x) for x in limiter._acquire(keys=keys, args=args)[:5])
        assert wait <= 0 or not within_horizon, "within the horizon every call gets a token, now or reserved"
        times.append(now - wait)
    return times


def busiest(times: list[float], span: float = 1.0) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + span) for start in times)


def test_the_all_endpoints_limit_never_lets_a_second_hold_more_than_max_rps(r):
    """Defect: a token bucket with half a second of burst let 1.5 x max_rps through in a second."""
    limiter = RateLimiter(r, "t", max_rps=20, learning=PINNED)

    times = grants(limiter, "lookup", 100)

    assert busiest(times) == 20
    assert 100 / (max(times) - min(times)) > 0.9 * 20  # and it does not throttle far below the limit


@pytest.mark.parametrize("max_rps", [0.5, 2.5])
def test_a_limit_below_one_or_between_whole_calls_a_second_still_holds(r, max_rps):
    limiter = RateLimiter(r, "t", max_rps=max_rps, learning=PINNED)
    n, w = window(max_rps)

    times = grants(limiter, "add", 12)

    assert busiest(times) <= max(1, int(max_rps))
    assert busiest(times, span=w - 1e-3) <= n  # replies carry a tenth of a millisecond


def test_a_pause_from_a_429_holds_back_reserved_tokens_and_calls_no_limit_counts(r):
    """Defect: an item coming back with a reserved token called at once, during the pause."""
    limited = RateLimiter(r, "t", per_minute={"add": 600})
    unlimited = RateLimiter(r, "t", learning=PINNED)
    reserved = {"add": [(limited.redis_now(), 0)]}  # due now

    limited.pause("add", 5.0)

    with pytest.raises(RateLimited) as raised:
        limited.acquire("add", reserved)
    assert 4.5 < raised.value.wait <= 5.0 and not raised.value.reserved
    with pytest.raises(RateLimited):
        unlimited.acquire("add")  # another worker of the tenant, with no limit of its own


def test_a_429_for_adds_holds_back_no_update(r):
    """Defect: a 429 for an add paused the tenant's every call, so updates went at the adds' pace."""
    limiter = RateLimiter(r, "t")

    limiter.pause("add", 5.0)

    limiter.acquire("update")
    limiter.acquire("lookup")
    with pytest.raises(RateLimited):
        limiter.acquire("add")


def test_under_an_all_endpoints_limit_a_429_pauses_every_endpoint(r):
    limiter = RateLimiter(r, "t", max_rps=50)

    limiter.pause("add", 5.0)

    with pytest.raises(RateLimited):
        limiter.acquire("update")


def test_due_times_come_from_redis_not_from_the_workers_clock(r, monkeypatch):
    """Defect: a reserved token's due time was the worker's own clock plus the wait, so a host whose
    clock ran ahead dropped its tokens as late, and one behind used them early."""
    limiter = RateLimiter(r, "t", per_minute={"add": 60})
    grants(limiter, "add", 1)  # the bucket's burst is gone: the next add must wait about a second
    skewed = time.time() + 100
    monkeypatch.setattr("worker.downstream.ratelimit.time.time", lambda: skewed + (time.monotonic() - started))
    started = time.monotonic()
    skewed_limiter = RateLimiter(r, "t", per_minute={"add": 60})

    with pytest.raises(RateLimited) as raised:
        skewed_limiter.acquire("add")
    seconds, micros = r.time()
    assert abs(raised.value.due - (seconds + micros / 1e6)) < 2  # on Redis's clock, not 100 s ahead
    reserved = {"add": [(raised.value.due, raised.value.epoch)]}
    began = time.monotonic()
    skewed_limiter.acquire("add", reserved)  # used when due, neither dropped as late nor used early
    assert reserved == {"add": []} and time.monotonic() - began < 1.5


def test_a_bucket_token_a_little_late_is_used_and_one_much_later_is_dropped(r):
    """A token a little late is still a call the allowance paid for; one seconds late would land in a burst
    with the on-time ones (measured: 43 answers 429 and 0.63 of the add limit when tokens were used up to
    5 s late), so a fresh one is taken instead."""
    limiter = RateLimiter(r, "t", per_minute={"update": 600})
    bucket = f"{limiter.log_key[:-4]}:update"
    reserved = {"update": [(limiter.redis_now() - 0.2, 0)]}

    limiter.acquire("update", reserved)
    assert reserved == {"update": []} and not r.exists(bucket)  # used: the bucket was not asked

    reserved = {"update": [(limiter.redis_now() - 2, 0)]}
    limiter.acquire("update", reserved)
    assert reserved == {"update": []} and r.exists(bucket)  # dropped: a fresh token was taken


def rate(r, endpoint: str = "add") -> float:
    """The learned rate, per second, as the fleet holds it."""
    return float(r.hget(f"cu:ratelimit:t:{endpoint}", "rate"))


def test_an_endpoint_busy_and_never_refused_grows_from_the_start_rate(r):
    limiter = RateLimiter(r, "t", learning=Learning(start={"add": 60}))  # one a second

    for _ in range(3):
        grants(limiter, "add", 3, within_horizon=False)
        time.sleep(0.5)

    assert rate(r) > 1.5  # doubling each busy second, about 2.8 after 1.5 s


@pytest.mark.lua("take_token", "throttled", "pause_left")
def test_a_429_cuts_the_rate_to_a_share_of_what_was_granted_once_per_episode(r):
    limiter = RateLimiter(r, "t", per_minute={"add": 600})  # a ceiling of 10 a second, started at it
    times = grants(limiter, "add", 20)  # 2 s of tokens at 10 a second

    limiter.pause("add", 1.0)
    after_first = rate(r)
    limiter.pause("add", 1.0)  # a call that was already under way: the same episode

    assert after_first == pytest.approx(CUT_SHARE * 10, rel=0.25)
    assert rate(r) == after_first
    assert int(r.hget("cu:ratelimit:t:add", "throttled")) == 2
    assert len(times) == 20
    reserved = {"add": [(max(times), 0)]}  # reserved before the cut, due after the pause
    time.sleep(1.0)
    tat = r.hget("cu:ratelimit:t:add", "tat")
    limiter.acquire("add", reserved)
    assert r.hget("cu:ratelimit:t:add", "tat") != tat  # void: a fresh token was taken at the new rate


def test_the_rate_climbs_back_while_busy_and_never_passes_the_ceiling(r):
    limiter = RateLimiter(r, "t", per_minute={"add": 600})
    r.hset("cu:ratelimit:t:add", mapping={"rate": 5, "base": 10})  # cut from 10 a second to 5

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        limiter.acquire("add", sleep_under=1.0)  # one caller after another, each waiting its token
    climbed = rate(r)
    assert 5.5 < climbed < 10  # 5% of 10 a second, per busy second
    r.hset("cu:ratelimit:t:add", "rate", 30)  # as learned when the ceiling was higher
    grants(limiter, "add", 3)
    assert rate(r) == 10


def script_calls(r) -> int:
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_slow_start_that_holds_no_one_back_costs_no_round_trip_per_call_until_a_429(r):
    limiter = RateLimiter(r, "t", learning=Learning(start={"lookup": 6000}))  # 100 a second
    calls_before, started = script_calls(r), time.monotonic()
    while time.monotonic() - started < MEASURE_SECONDS + 1.5:  # 50 a second: the bucket holds no one back
        limiter.acquire("lookup")
        time.sleep(0.02)
    made = int((time.monotonic() - started) / 0.02)
    scripts = script_calls(r) - calls_before
    # A script a call for the measuring time, then one a second (FREE_SECONDS) and a pause check each half second.
    assert scripts < made * 0.8, f"{scripts} scripts for about {made} calls"

    limiter.pause("lookup", 0.2)
    with pytest.raises(RateLimited):
        limiter.acquire("lookup")  # the 429 ends the skipping at once, in this process
    found = r.hmget("cu:ratelimit:t:lookup", "rate", "base")
    assert found[1] is not None  # the slow start is over
    # cut to a share of what the downstream accepted (about 50 a second), not of the slow start's rate
    assert float(found[0]) == pytest.approx(CUT_SHARE * 50, rel=0.35)


def test_a_busy_slow_start_hands_a_process_spare_tokens_and_paces_them_as_its_own_calls(r, monkeypatch):
    """Defect: on a fresh store every call of a busy slow start ran the bucket's script, about 1,500
    of them in a 3,000-item job's first seconds: 2.4 Redis commands an item."""

    def calls_of_24_threads(tenant: str) -> tuple[int, list[float]]:
        limiter = RateLimiter(r, tenant, learning=Learning(start={"lookup": 6000}))  # 100 a second
        calls_before, started = script_calls(r), time.monotonic()
        done: list[float] = []

        def caller() -> None:
            for _ in range(10):
                limiter.acquire("lookup")
                done.append(time.monotonic() - started)

        pool = [threading.Thread(target=caller) for _ in range(24)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(30)
        assert len(done) == 240
        return script_calls(r) - calls_before, sorted(done)

    spared, spared_times = calls_of_24_threads("t")
    monkeypatch.setattr(ratelimit, "SLOW_START_SPARES", 0)
    single, single_times = calls_of_24_threads("u")

    assert single >= 240 and spared < 240 / 3
    # Paced as single calls are: half a second of tokens at once, then 100 a second growing fourfold a
    # second; the same calls take as long (about 0.5 s), spares or none.
    assert spared_times[-1] == pytest.approx(single_times[-1], rel=0.25)
    assert spared_times[-1] > 0.3


def test_two_threads_letting_go_of_a_skipped_bucket_at_once_both_go_on(r, monkeypatch):
    """Defect: a worker thread whose skipping had run out crashed its task (KeyError) when another
    thread let go of the same endpoint's skipping first; the item then waited a lease to run again."""
    limiter = RateLimiter(r, "t", learning=Learning(start={"lookup": 6000}))
    limiter._free["lookup"] = (time.monotonic() - 1, "0")  # skipping ran out: the next call asks again
    looked = limiter._pause_check

    def and_another_thread_lets_go(endpoint):
        limiter._free.pop(endpoint, None)
        return looked(endpoint)

    monkeypatch.setattr(limiter, "_pause_check", and_another_thread_lets_go)

    limiter.acquire("lookup")  # no KeyError: the bucket is asked, and grants its token


def test_a_write_that_waits_in_a_slow_start_sleeps_in_place_and_one_under_a_found_rate_hands_its_slot_on(r):
    """Defect: on a fresh store every add that met a wait in its slow start went back to the scheduler,
    though the wait was a fraction of a second: a third of a 3,000-item job came back, looked its
    customers up again and cost about 40 Redis commands each, and no add went out for three seconds."""
    learning = RateLimiter(r, "t")  # 20 adds a second to start with, half a second of burst
    grants(learning, "add", 15)  # the burst taken, and tokens reserved past it

    started = time.monotonic()
    learning.acquire("add", sleep_under=0.0)  # an item with others behind it in its message
    assert time.monotonic() - started > 0.005  # it slept for its token, on its slot

    found = RateLimiter(r, "u")
    r.hset("cu:ratelimit:u:add", mapping={"rate": 20, "base": 20})  # a rate a 429 found
    grants(found, "add", 15)
    with pytest.raises(RateLimited) as waited:
        found.acquire("add", sleep_under=0.0)
    assert waited.value.reserved  # handed back holding its token, so the slot serves another item


def test_a_learned_rate_outlives_the_workers_and_expires_unused(r):
    limiter = RateLimiter(r, "t", learning=Learning(memory_seconds=60))
    grants(limiter, "add", 3)
    limiter.pause("add", 0.1)

    again = RateLimiter(r, "t", learning=Learning(memory_seconds=60))  # a worker started later
    assert learned_rates(r, "t", {}, again.learning)["add"].found
    assert 0 < r.ttl("cu:ratelimit:t:add") <= 60


def test_pinned_limits_hold_as_configured_and_leave_other_endpoints_free(r):
    limiter = RateLimiter(r, "t", per_minute={"add": 600}, learning=PINNED)
    grants(limiter, "add", 5)
    limiter.pause("add", 0.01)

    shown = learned_rates(r, "t", {"add": 600}, PINNED)
    assert shown["add"].per_minute == 600 and shown["update"].per_minute is None


def test_the_knobs_read_from_the_environment():
    one = learning_of(Settings.from_env({"CAPILLARY_RATE_START": "120", "CAPILLARY_RATE_LEARNING": "off"}))
    assert not one.enabled and one.start_per_minute("lookup") == one.start_per_minute("add") == 120
    assert learning_of(Settings.from_env({})).enabled  # on unless turned off
    some = learning_of(Settings.from_env({"CAPILLARY_RATE_START": "add=60", "CAPILLARY_RATE_MEMORY_SECONDS": "90",
                                          "CAPILLARY_RATE_LEARNING": "on"}))
    assert some.enabled and some.start_per_minute("add") == 60 and some.start_per_minute("lookup") == 6000
    assert some.memory_seconds == 90
    for bad in ({"CAPILLARY_RATE_LEARNING": "maybe"}, {"CAPILLARY_RATE_START": "adds=5"},
                {"CAPILLARY_RATE_START": "-1"}):
        with pytest.raises(SettingsError, match="CAPILLARY_RATE_"):
            Settings.from_env(bad)
