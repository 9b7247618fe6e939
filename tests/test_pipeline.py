"""The pipeline end to end: intake, a real worker, the real simulator over HTTP, results."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

SEED = json.loads((Path(__file__).resolve().parents[1] / "examples" / "seed-batch.json").read_text())

pytestmark = pytest.mark.usefixtures("worker")


def customer(external_id: str, mobile: str | None = None, *, first_name: str = "Ann", source: str = "WEB_ENGAGE",
             account: str = "acc1", **extra) -> dict:
    identifiers = [{"type": "externalId", "value": external_id}]
    if mobile:
        identifiers.append({"type": "mobile", "value": mobile})
    return {"profiles": [{"firstName": first_name, "lastName": "Test", "identifiers": identifiers,
                          "source": source, "accountId": account}], **extra}


def unique_digits(n: int = 10) -> str:
    return "91" + str(uuid.uuid4().int)[:n]


def test_seed_batch_creates_the_first_customer_and_fails_the_second_alone(api, sim):
    job = api.run(SEED)

    assert (job["state"], job["totalCount"], job["processedCount"], job["failureCount"]) == ("COMPLETED", 2, 2, 1)
    assert job["createdCount"] == 1
    first, second = api.results(job["jobId"])
    assert first["index"] == 0 and first["action"] == "CREATED" and first["errors"] == []
    assert isinstance(first["entityId"], int)
    # `result` is the customer as the lookup API returns it.
    assert first["result"]["id"] == first["entityId"]
    profile = first["result"]["profiles"][0]
    assert {(i["type"], i["value"]) for i in profile["identifiers"]} == {
        ("externalId", "VISHKWJEJWJC2381"), ("mobile", "916360499160")}
    assert profile["commChannels"][0]["value"] == "916360499160"
    assert first["result"]["extendedFields"]["gender"] == "Male"

    assert second["index"] == 1 and second["action"] == "FAILED" and second["entityId"] is None
    fields = {e["field"] for e in second["errors"]}
    assert "[1].profiles[0].source" in fields
    assert all(e["message"] for e in second["errors"])

    stored = sim.customers()
    assert len(stored) == 1
    assert stored[0]["id"] == first["entityId"]
    assert stored[0]["extendedFields"]["gender"] == "Male"
    # The invalid element never reached the downstream: the valid one made two lookups, one add and one
    # read-back by id, and nothing else.
    calls = {endpoint: sum(by_status.values()) for endpoint, by_status in sim.calls()["byEndpoint"].items()}
    assert {endpoint: n for endpoint, n in calls.items() if n} == {"lookup": 2, "add": 1, "get": 1}


def test_the_same_batch_again_updates_the_same_customer(api, sim):
    created = api.results(api.run(SEED)["jobId"])[0]
    job = api.run(SEED)

    again = api.results(job["jobId"])[0]
    assert again["action"] == "UPDATED" and again["entityId"] == created["entityId"]
    assert (job["createdCount"], job["updatedCount"], job["failureCount"]) == (0, 1, 1)
    assert len(sim.customers()) == 1


def test_a_new_mobile_for_a_known_external_id_moves_the_mobile(api, sim):
    ext, old, new = "EXT-" + uuid.uuid4().hex[:8], unique_digits(), unique_digits()
    api.run([customer(ext, old)])

    job = api.run([customer(ext, new, first_name="Bea")])

    item = api.results(job["jobId"])[0]
    assert item["action"] == "UPDATED" and item["errors"] == []
    identifiers = {(i["type"], i["value"]) for i in item["result"]["profiles"][0]["identifiers"]}
    assert ("mobile", new) in identifiers and ("mobile", old) not in identifiers
    (stored,) = sim.customers()
    assert stored["profiles"][0]["firstName"] == "Bea"
    assert {i["value"] for i in stored["profiles"][0]["identifiers"] if i["type"] == "mobile"} == {new}
    assert sum(sim.calls()["byEndpoint"]["changeIdentifier"].values()) == 1


def test_skip_change_identifier_updates_the_profile_but_keeps_identifiers(api, sim):
    ext, old, new = "EXT-" + uuid.uuid4().hex[:8], unique_digits(), unique_digits()
    api.run([customer(ext, old)])

    job = api.run([customer(ext, new, first_name="Cid")], skipChangeIdentifier="true")

    assert job["skipChangeIdentifier"] is True and job["failureCount"] == 0
    (stored,) = sim.customers()
    assert stored["profiles"][0]["firstName"] == "Cid"
    assert {i["value"] for i in stored["profiles"][0]["identifiers"] if i["type"] == "mobile"} == {old}
    assert sum(sim.calls()["byEndpoint"]["changeIdentifier"].values()) == 0


def test_a_thousand_items_with_some_invalid_ones_are_accounted_for_exactly(api, sim):
    run = uuid.uuid4().hex[:6]
    invalid = set(range(7, 1000, 37))
    elements = []
    for i in range(1000):
        element = customer(f"BULK-{run}-{i}", f"91{70000000 + i:08d}")
        if i in invalid:
            element["profiles"][0]["source"] = "NOT_A_SOURCE" if i % 2 else None
        elements.append(element)

    job = api.run(elements, timeout=180)

    assert (job["totalCount"], job["processedCount"], job["failureCount"]) == (1000, 1000, len(invalid))
    assert (job["successCount"], job["createdCount"]) == (1000 - len(invalid), 1000 - len(invalid))
    failed = api.results(job["jobId"], outcome="failed")
    assert [item["index"] for item in failed] == sorted(invalid)
    assert all(item["errors"][0]["field"] == f"[{item['index']}].profiles[0].source" for item in failed)

    pages = [api.get(f"/jobs/{job['jobId']}/results", offset=offset, limit=250).get_json()
             for offset in range(0, 1000, 250)]
    indexes = [item["index"] for page in pages for item in page["response"]]
    assert indexes == list(range(1000))
    assert all(page["totalCount"] == 1000 and page["failureCount"] == len(invalid) for page in pages)

    export = api.get(f"/jobs/{job['jobId']}/results", format="ndjson")
    lines = export.get_data(as_text=True).splitlines()
    assert export.mimetype == "application/x-ndjson" and len(lines) == 1000
    assert [json.loads(line)["index"] for line in lines] == list(range(1000))
    assert len(sim.customers()) == 1000 - len(invalid)


@pytest.mark.parametrize("status", [400, 404, 200])
def test_every_not_found_status_gives_the_same_outcomes(api, sim, status):
    sim.configure(notFoundStatus=status)
    ext = "NF-" + uuid.uuid4().hex[:8]

    first = api.run([customer(ext, unique_digits())])
    second = api.run([customer(ext)])

    assert api.results(first["jobId"])[0]["action"] == "CREATED"
    assert api.results(second["jobId"])[0]["action"] == "UPDATED"
    assert first["failureCount"] == second["failureCount"] == 0
    assert len(sim.customers()) == 1


def test_wait_answers_with_the_synchronous_apis_shape(api, sim):
    response = api.submit(SEED, wait=30)

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"response", "totalCount", "failureCount"}
    assert (body["totalCount"], body["failureCount"]) == (2, 1)
    assert [item["action"] for item in body["response"]] == ["CREATED", "FAILED"]
    job = api.client.get(response.headers["Location"], headers=api.headers).get_json()
    assert (job["state"], job["totalCount"], job["failureCount"]) == ("COMPLETED", 2, 1)


def test_cancel_ends_the_items_not_yet_started_as_cancelled(api, sim):
    sim.configure(latencyMs=50)
    job_id = api.submit([customer(f"CXL-{uuid.uuid4().hex[:6]}-{i}") for i in range(300)]).get_json()["jobId"]

    response = api.delete(f"/jobs/{job_id}")

    assert response.status_code == 200 and response.get_json()["state"] == "CANCELLED"
    job = api.wait(job_id, timeout=120)
    assert (job["state"], job["processedCount"]) == ("CANCELLED", 300)
    assert job["cancelledCount"] > 0 and job["successCount"] + job["cancelledCount"] == 300
    assert job["failureCount"] == job["cancelledCount"]
    cancelled = [i for i in api.results(job_id) if i["action"] == "CANCELLED"]
    assert len(cancelled) == job["cancelledCount"] and cancelled[0]["errors"][0]["code"] == 9002
    assert len(sim.customers()) == job["successCount"]
    assert api.delete(f"/jobs/{job_id}").get_json()["state"] == "CANCELLED"  # cancelling again changes nothing
