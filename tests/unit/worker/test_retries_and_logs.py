"""Backoff, the item's outcome as Flower shows it, and masking in logs."""

import json
import logging

import pytest

from worker.downstream.client import RetryableError
from worker.downstream.retry import RetryPolicy, callback_delay, store_outage_pauses
from worker.items.run import gave_up_error, outcome_summary
from worker.items.upsert import CANCELLED, CREATED, FAILED, ItemOutcome, error
from worker.logs import JsonFormatter, mask, mask_value


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_backoff_doubles_with_jitter_under_a_cap(attempt):
    delays = [RetryPolicy(8, base_seconds=1.0, max_seconds=5.0).backoff(attempt) for _ in range(200)]
    ceiling = min(5.0, 2.0 ** (attempt - 1))
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 100  # jittered, so retries of many items spread out


def test_backoff_is_never_sooner_than_retry_after_but_still_capped():
    policy = RetryPolicy(8, base_seconds=0.1, max_seconds=10.0)
    assert policy.backoff(1, retry_after=3.0) == 3.0
    assert policy.backoff(1, retry_after=300.0) == 10.0
    assert not policy.gives_up_after(7) and policy.gives_up_after(8)


def test_callbacks_back_off_with_jitter_and_a_store_outage_is_waited_out_for_two_minutes():
    assert all(0.5 * 2 ** a <= callback_delay(a) <= 2 ** a for a in (1, 2, 3) for _ in range(50))
    assert len({callback_delay(3) for _ in range(50)}) > 40  # jittered, unlike before
    pauses = list(store_outage_pauses())
    assert pauses[0] < 0.3 and max(pauses) <= 6.0 and 120 <= sum(pauses) <= 126


def test_giving_up_says_how_often_and_what_last_went_wrong():
    gave_up = gave_up_error(RetryableError("lookup: downstream answered HTTP 503", endpoint="lookup", status=503), 8)
    assert (gave_up["code"], gave_up["attempts"], gave_up["lastStatus"]) == (9001, 8, 503)
    assert "gave up after 8 attempts" in gave_up["message"] and "HTTP 503" in gave_up["message"]


def test_the_outcome_flower_shows_is_short():
    assert outcome_summary(ItemOutcome(CREATED, entity_id=500000123)) == "CREATED 500000123"
    assert outcome_summary(ItemOutcome(CREATED, entity_id=5, errors=[error(3017, "x")])) == "CREATED 5 3017"
    assert outcome_summary(ItemOutcome(FAILED, errors=[error(8045, "x")])) == "FAILED 8045"
    assert outcome_summary(ItemOutcome(CANCELLED, errors=[error(9002, "x")])) == "CANCELLED"


def test_personal_data_and_secrets_are_masked_in_the_final_text():
    text = mask("mobile 919876543210 email jane.doe@example.com Authorization: Bearer abc.def password=hunter2")
    assert "919876543210" not in text and "91********10" in text
    assert "jane.doe@" not in text and "j***@example.com" in text
    assert "abc.def" not in text and "hunter2" not in text
    assert mask_value("919876543210") == "91********10" and mask_value("abc") == "***"


def test_a_log_line_is_one_json_object_masked_traceback_included():
    try:
        raise ValueError("bad mobile 919876543210")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "item %s", ("a@b.io",), exc_info=True)
        record.exc_info = __import__("sys").exc_info()
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["message"] == "item a***@b.io"
    assert "919876543210" not in line and "ValueError" in entry["exception"]
