"""A dry run: validated and looked up like any job, nothing written downstream; then run for real from its
stored inputs, and every prediction becomes the outcome it named."""

from __future__ import annotations

import pytest

from api.openapi import Item, Job
from tests.helpers import customers

pytestmark = pytest.mark.usefixtures("worker")

WRITES = ("add", "update", "changeIdentifier")


def write_calls(sim) -> int:
    by_endpoint = sim.calls()["byEndpoint"]
    return sum(sum(by_endpoint.get(endpoint, {}).values()) for endpoint in WRITES)


def submit(api, elements, **query) -> str:
    response = api.submit(elements, **query)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["jobId"]


def run(api, job_id: str) -> dict:
    response = api.client.post(f"/v2/integrations/customer/upsert/jobs/{job_id}/run", headers=api.headers)
    return response


def test_a_dry_run_writes_nothing_predicts_every_item_and_its_run_does_what_it_said(api, sim):
    known = customers(100, "DRY-K")
    seeded = api.run(known)
    assert seeded["createdCount"] == 100
    ids = [item["entityId"] for item in api.results(seeded["jobId"])]
    renamed = [{"profiles": [{**c["profiles"][0], "firstName": f"Renamed{i}"}]} for i, c in enumerate(known[:50])]
    new_mobile = [{"profiles": [{**c["profiles"][0], "identifiers": [
        c["profiles"][0]["identifiers"][0], {"type": "mobile", "value": f"91{70000000 + i:08d}"}]}]}
        for i, c in enumerate(known[50:])]
    fresh = customers(50, "DRY-N", first_mobile=5000)
    invalid = [{"profiles": [{"identifiers": [{"type": "mobile", "value": "9170000001"}], "source": "NOWHERE",
                              "accountId": "acc1"}]}]
    batch = renamed + new_mobile + fresh + invalid
    writes_before = write_calls(sim)

    dry = api.wait(submit(api, batch, dryRun="true"))

    assert write_calls(sim) == writes_before  # not one add, update or change of identifiers
    assert dry["dryRun"] is True and dry["state"] == "COMPLETED"
    assert (dry["wouldCreateCount"], dry["wouldUpdateCount"], dry["failureCount"]) == (50, 100, 1)
    assert (dry["createdCount"], dry["updatedCount"]) == (0, 0)
    predicted = api.results(dry["jobId"])
    for i, item in enumerate(predicted[:50]):
        assert (item["action"], item["entityId"]) == ("WOULD_UPDATE", ids[i])
        assert item["changes"] == {"firstName": {"old": f"N{i}", "new": f"Renamed{i}"}}
        assert item["identifierChanges"] == {"add": [], "remove": []}
    shown = 0
    for i, item in enumerate(predicted[50:100]):
        assert (item["action"], item["entityId"]) == ("WOULD_UPDATE", ids[50 + i])
        changes = item["identifierChanges"]
        assert [c["type"] for c in changes["add"]] == ["mobile"] == [c["type"] for c in changes["remove"]]
        assert all("*" in c["value"] for c in changes["add"] + changes["remove"])  # masked
        assert f"{70000000 + i:08d}" not in str(item)
        shown += 1
    assert shown == 50
    assert all(item["action"] == "WOULD_CREATE" and item["entityId"] is None for item in predicted[100:150])
    assert predicted[150]["action"] == "FAILED" and predicted[150]["errors"][0]["code"] == 8003
    assert all(Item().validate(item) == {} for item in predicted)  # as the OpenAPI document describes them
    assert Job().validate(dry) == {}

    started = run(api, dry["jobId"])
    assert started.status_code == 202, started.get_json()
    real = api.wait(started.get_json()["jobId"])

    assert real["dryRun"] is False and real["dryRunOf"] == dry["jobId"]
    assert (real["createdCount"], real["updatedCount"], real["failureCount"]) == (50, 100, 1)
    outcomes = api.results(real["jobId"])
    right = 0
    for guess, outcome in zip(predicted, outcomes, strict=True):
        expected = guess["action"].removeprefix("WOULD_").replace("CREATE", "CREATED").replace("UPDATE", "UPDATED")
        if outcome["action"] == expected and (guess["entityId"] is None or guess["entityId"] == outcome["entityId"]):
            right += 1
    assert right == 151
    assert {c["profiles"][0]["firstName"] for c in sim.customers()} >= {f"Renamed{i}" for i in range(50)}
    assert api.get(f"/jobs/{dry['jobId']}").get_json()["runJobId"] == real["jobId"]
    again = run(api, dry["jobId"])  # a retried request starts nothing new
    assert again.status_code == 200 and again.get_json()["jobId"] == real["jobId"]
    not_a_dry_run = run(api, real["jobId"])
    assert not_a_dry_run.status_code == 409
    assert not_a_dry_run.get_json()["errors"][0]["code"] == "not_a_finished_dry_run"


def test_items_sharing_an_identifier_are_predicted_in_order(api, sim):
    first = {"profiles": [{"firstName": "Ann", "identifiers": [{"type": "externalId", "value": "DRY-CHAIN-1"}],
                           "source": "WEB_ENGAGE", "accountId": "acc1"}]}
    second = {"profiles": [{"firstName": "Anne", "identifiers": [
        {"type": "externalId", "value": "DRY-CHAIN-1"}, {"type": "mobile", "value": "919000011111"}],
        "source": "WEB_ENGAGE", "accountId": "acc1"}]}
    third = {"profiles": [{"lastName": "Lee", "identifiers": [{"type": "mobile", "value": "919000011111"}],
                           "source": "WEB_ENGAGE", "accountId": "acc1"}]}

    writes_before = write_calls(sim)
    dry = api.wait(submit(api, [first, second, third], dryRun="true"))
    a, b, c = api.results(dry["jobId"])
    assert all(Item().validate(item) == {} for item in (a, b, c))

    assert a["action"] == "WOULD_CREATE" and a["changes"]["firstName"] == {"old": None, "new": "Ann"}
    assert (b["action"], b["customerOfItem"]) == ("WOULD_UPDATE", 0)
    assert b["changes"] == {"firstName": {"old": "Ann", "new": "Anne"}}
    assert [i["type"] for i in b["identifierChanges"]["add"]] == ["mobile"]
    assert (c["action"], c["customerOfItem"]) == ("WOULD_UPDATE", 0)  # found by the mobile the second would add
    assert write_calls(sim) == writes_before

    real = api.wait(run(api, dry["jobId"]).get_json()["jobId"])
    x, y, z = api.results(real["jobId"])
    assert [x["action"], y["action"], z["action"]] == ["CREATED", "UPDATED", "UPDATED"]
    assert x["entityId"] == y["entityId"] == z["entityId"]


def test_a_dry_run_can_be_cancelled_and_is_then_not_runnable(api, sim):
    sim.configure(latencyMs=200)
    job_id = submit(api, customers(200, "DRY-C"), dryRun="true")
    cancelled = api.delete(f"/jobs/{job_id}").get_json()
    assert cancelled["state"] == "CANCELLED" and cancelled["dryRun"] is True
    api.wait(job_id)

    refused = run(api, job_id)

    assert refused.status_code == 409
