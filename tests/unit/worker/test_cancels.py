"""The cancel watch (worker/store/cancels.py): a worker process hears its jobs' cancels instead of
asking Redis as each item starts, and asks Redis again whenever it may have missed one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers import wait_for
from tests.unit.worker.test_items import context, three_invalid_items
from tests.unit.worker.test_jobstore import lease
from worker.items.run import run_items
from worker.store.cancels import CancelWatch


@pytest.fixture
def watch(r) -> Iterator[CancelWatch]:
    watch = CancelWatch(r)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    wait_for(watch.listening, timeout=10, what="the watch to subscribe")
    yield watch
    watch.stop()
    thread.join(5)


def test_a_cancel_is_heard_and_a_watch_that_may_have_missed_one_says_it_cannot_tell(r, store, watch):
    before = time.monotonic()
    job_id, other = three_invalid_items(store), three_invalid_items(store)
    store.cancel(job_id)

    wait_for(lambda: watch.cancelled(job_id, before), timeout=5, what="the cancel to be heard")
    assert watch.cancelled(other, before) is False  # listening since before: nothing missed
    assert CancelWatch(r).cancelled(other, before) is None  # never subscribed: it cannot tell

    # The connection breaks: what the watch vouched for is gone until Redis confirms it again.
    r.client_kill_filter(_type="pubsub")
    wait_for(lambda: watch.cancelled(other, before) is None, timeout=5, what="the watch to stop vouching")
    wait_for(watch.listening, timeout=10, what="the watch to subscribe again")
    assert watch.cancelled(other, before) is None  # it may have missed a cancel while it was away
    assert watch.cancelled(other, time.monotonic()) is False
    assert watch.cancelled(job_id, before) is True


def test_items_behind_a_messages_first_ask_the_watch_not_redis(r, store, watch):
    job_id = three_invalid_items(store)
    for i in range(3):
        lease(store, job_id, i, "t1")
    ctx = context(r, store)
    ctx.cancels = watch
    looks_before = int(r.info("commandstats").get("cmdstat_hexists", {}).get("calls", 0))
    calls: list[str] = []

    def guard(run):
        calls.append("call")
        if len(calls) == 3:  # the first item has run; the second is about to start
            store.cancel(job_id)
            wait_for(lambda: watch.cancelled(job_id, 0.0), timeout=5, what="the cancel to be heard")
        return run()

    runs = run_items(ctx, job_id, [0, 1, 2], "t1", guard=guard)

    assert [run.summary for run in runs] == ["FAILED 8004", "CANCELLED", "CANCELLED"]
    assert int(r.info("commandstats").get("cmdstat_hexists", {}).get("calls", 0)) == looks_before
