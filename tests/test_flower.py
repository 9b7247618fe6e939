"""Flower, as the Procfile's `flower` line starts it, shows each item's outcome in its task list from its start."""

from __future__ import annotations

import ast
import subprocess
import uuid

import pytest
import requests

from cli import procfile
from tests.helpers import customers, free_port, settings_env, wait_for

pytestmark = pytest.mark.slow

AUTH = ("ops", "pw-" + uuid.uuid4().hex)
#: No source: validation fails it with 8004, without a downstream call.
NO_SOURCE = {"profiles": [{"identifiers": [{"type": "mobile", "value": "919900000002"}], "accountId": "acc1"}]}


def test_flowers_task_list_shows_the_first_jobs_outcomes_and_finds_them_by_job(make_stack, sim, tmp_path):
    stack = make_stack()
    node = stack.worker().node_name()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = settings_env(stack.settings) | {"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    log_path = tmp_path / "flower.log"
    with log_path.open("wb") as log:
        flower = procfile.start("flower", env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def tasks(**query) -> dict:
                response = requests.get(url + "/api/tasks", params=query, auth=AUTH, timeout=5)
                response.raise_for_status()
                return response.json()

            # As `make run` does: the job goes in as soon as Flower answers, with nothing to wake its events.
            wait_for(lambda: requests.get(url + "/healthcheck", timeout=5).ok, timeout=60,
                     what=f"Flower to answer (log: {log_path})", interval=0.2)
            job_id = stack.api.submit([*customers(2, "FLW-" + uuid.uuid4().hex[:6]), NO_SOURCE]).get_json()["jobId"]
            found = wait_for(lambda: tasks(search=f"args:{job_id} result:FAILED"), timeout=30,
                             what="Flower to show the failed item of the job", interval=0.25)
            page = requests.get(url + "/tasks", auth=AUTH, timeout=5).text

            assert '<th data-column="result">Result</th>' in page  # the outcome column, without asking
            assert [(t["name"], t["state"], t["result"]) for t in found.values()] == [
                ("customer_upsert.process_item", "SUCCESS", "'FAILED 8004'")]
            (task,) = found.values()
            assert task["worker"] == node
            assert task["args"] == f"('{job_id}', 2)"  # the job and the item's index in the submission
            assert "'tenant': 'default'" in task["kwargs"] and "'lease': '" in task["kwargs"]
            assert "token" not in task["kwargs"]  # nothing on an operator's screen reads like a credential
            created = wait_for(lambda: len(tasks(search=f"args:{job_id} result:CREATED")) == 2, timeout=30,
                               what="Flower to show the two created items of the job", interval=0.25)
            assert created

            # A job with more items than the fleet has slots (16 threads and 16 queued): some tasks carry
            # several items, and name each with its outcome.
            no_sources = [{"profiles": [{"identifiers": [{"type": "mobile", "value": f"9199000001{i:02d}"}]}]}
                          for i in range(40)]  # distinct mobiles: items sharing one would run one at a time
            big_id = stack.api.submit(no_sources).get_json()["jobId"]
            shared = wait_for(lambda: [t for t in tasks(search=f"args:{big_id} result:FAILED").values()
                                       if "; " in (t["result"] or "")], timeout=30,
                              what="Flower to show a task of several items", interval=0.25)
            for task in shared:
                job, indexes = ast.literal_eval(task["args"])
                assert job == big_id and len(indexes) > 1
                assert ast.literal_eval(task["result"]) == "; ".join(f"#{i} FAILED 8004" for i in indexes)

            # The worker publishes task events a tenth of a second at a time: none is lost on the way.
            def items_succeeded() -> list[int]:
                found = [ast.literal_eval(t["args"])[1] for t in tasks(search=f"args:{big_id}").values()
                         if t["state"] == "SUCCESS"]
                return sorted(i for index in found for i in ([index] if isinstance(index, int) else index))

            wait_for(lambda: items_succeeded() == list(range(40)), timeout=30,
                     what="Flower to show every item of the job as succeeded", interval=0.25)
        finally:
            procfile.stop(flower)
