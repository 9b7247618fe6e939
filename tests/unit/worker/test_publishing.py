"""The leader's messages on a real Redis broker: one LPUSH per tick, in order, as Celery reads them."""

from __future__ import annotations

import base64
import json

from worker.celery_app import create_celery
from worker.dispatch.leases import Delivery
from worker.dispatch.publishing import publish
from worker.queues import Queues, TaskNames
from worker.settings import Settings


def test_a_ticks_messages_go_in_one_lpush_and_come_out_in_the_order_they_were_sent(r, unit_redis_server):
    app = create_celery(Settings(redis_url=unit_redis_server.url, upsert_api_token="tok"))
    deliveries = [Delivery("job1", i, f"tok{i}", "default") for i in range(5)]
    r.config_resetstat()

    publish(app, deliveries)
    publish(app, deliveries[:2])  # a second tick: its batch coalesces too

    assert int(r.info("commandstats")["cmdstat_lpush"]["calls"]) == 2
    sent = [json.loads(r.rpop(Queues.ITEMS)) for _ in range(7)]  # Celery's workers take from the right
    assert [m["headers"]["task"] for m in sent] == [TaskNames.PROCESS_ITEM] * 7
    assert [m["headers"]["argsrepr"] for m in sent] == [repr(("job1", i)) for i in (0, 1, 2, 3, 4, 0, 1)]
    assert r.llen(Queues.ITEMS) == 0
    app.close()


def test_the_items_of_a_job_that_share_a_token_go_in_one_message_that_names_them_all(r, unit_redis_server):
    app = create_celery(Settings(redis_url=unit_redis_server.url, upsert_api_token="tok"))
    deliveries = [Delivery("job1", i, f"tok{i % 2}", "default") for i in range(5)] + [Delivery("job2", 0, "tok0", "x")]

    publish(app, deliveries)

    sent = [json.loads(r.rpop(Queues.ITEMS)) for _ in range(r.llen(Queues.ITEMS))]
    assert [m["headers"]["argsrepr"] for m in sent] == [repr(("job1", [0, 2, 4])), repr(("job1", [1, 3])),
                                                        repr(("job2", 0))]
    assert [json.loads(base64.b64decode(m["body"]))[0] for m in sent] == [["job1", [0, 2, 4]], ["job1", [1, 3]],
                                                                         ["job2", 0]]
    app.close()
