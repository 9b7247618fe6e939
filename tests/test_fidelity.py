"""Issue 7: the documented behaviours of the v2 customer APIs, each against the simulator in the mode that shows it.

End to end through the API and a real worker, but for the lost add answer, which is shown one call at a time.
"""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import wait_for
from tests.test_client import tenant
from tests.test_pipeline import SEED, customer, unique_digits
from worker.downstream.client import CapillaryClient, RetryableError
from worker.items.upsert import CREATED, MemoryJournal, upsert_customer

pytestmark = pytest.mark.usefixtures("worker")

CARD_LABEL_INVALID = {"status": False, "code": 3017, "message": "status label invalid"}


def identifiers_of(item: dict) -> set[tuple[str, str]]:
    return {(i["type"], i["value"]) for i in item["result"]["profiles"][0]["identifiers"]}


def calls(sim) -> dict[str, int]:
    return {endpoint: sum(by_status.values()) for endpoint, by_status in sim.calls()["byEndpoint"].items()
            if by_status}


def test_identifiers_the_lookup_does_not_take_go_only_to_add_and_change_identifier(api, sim):
    ext, mobile, union, line = "UN-" + uuid.uuid4().hex[:8], unique_digits(), "U-" + uuid.uuid4().hex, "L-1"
    element = customer(ext, mobile)
    element["profiles"][0]["identifiers"].append({"type": "unionId", "value": union})
    created = api.results(api.run([element])["jobId"])[0]
    element["profiles"][0]["identifiers"].append({"type": "line", "value": line})
    updated = api.results(api.run([element])["jobId"])[0]

    assert created["action"] == "CREATED" and created["errors"] == []
    assert ("unionId", union) in identifiers_of(created)
    assert updated["action"] == "UPDATED" and updated["errors"] == []
    assert updated["entityId"] == created["entityId"] and ("line", line) in identifiers_of(updated)
    # Each run looked up the externalId and the mobile only; unionId and line went to add and changeIdentifier.
    assert calls(sim) == {"lookup": 4, "add": 1, "update": 1, "changeIdentifier": 1, "get": 2}


def test_an_element_no_lookup_can_find_fails_before_any_call(api, sim):
    element = customer("unused")
    element["profiles"][0]["identifiers"] = [{"type": "unionId", "value": "U-1"}, {"type": "line", "value": "L-1"}]

    job = api.run([element])

    (item,) = api.results(job["jobId"])
    assert job["failureCount"] == 1 and item["action"] == "FAILED"
    (problem,) = item["errors"]
    assert problem["field"] == "[0].profiles[0].identifiers" and problem["code"] == 8013
    assert "mobile, email, externalId, cardnumber, wechat, cardExternalId" in problem["message"]
    assert sim.calls()["total"] == 0


@pytest.mark.parametrize("status", [400, 404, 200])
def test_a_mobile_known_only_in_another_source_is_not_found_here(api, sim, status):
    sim.configure(notFoundStatus=status)
    mobile = unique_digits()
    api.run([customer("INST-" + uuid.uuid4().hex[:8], mobile, source="INSTORE", account=None)])

    job = api.run([customer("WEB-" + uuid.uuid4().hex[:8], mobile)])

    (item,) = api.results(job["jobId"])
    assert item["action"] == "CREATED" and item["errors"] == [] and job["failureCount"] == 0
    assert [w["code"] for w in item["warnings"]] == [8050]  # "Same Customer found in other sources,Combining"
    assert {c["profiles"][0]["source"] for c in sim.customers()} == {"INSTORE", "WEB_ENGAGE"}


def test_a_write_answered_with_an_id_and_errors_is_a_partial_success(api, sim):
    ext = "CARD-" + uuid.uuid4().hex[:8]
    element = customer(ext)
    element["profiles"][0]["identifiers"].append(
        {"type": "cardnumber", "value": "C-" + ext, "seriesCode": "BUKLPRM", "statusLabel": "NEW CARD"})

    added_job = api.run([element])
    updated_job = api.run([element])

    for job, action in ((added_job, "CREATED"), (updated_job, "UPDATED")):
        (item,) = api.results(job["jobId"])
        assert item["action"] == action and isinstance(item["entityId"], int)
        assert item["result"]["id"] == item["entityId"] and identifiers_of(item) == {("externalId", ext)}
        assert item["errors"] == [CARD_LABEL_INVALID]
        assert (job["failureCount"], job["successCount"]) == (1, 0)
    assert added_job["createdCount"] == 1 and updated_job["updatedCount"] == 1
    assert len(sim.customers()) == 1


def test_the_seeds_examples_keep_their_answer_shape_and_a_third_gets_the_seeds_3017(api, sim):
    third = {"profiles": [{"firstName": "Vishal", "lastName": "K",
                           "identifiers": [{"type": "externalId", "value": "VISHK-3017-" + uuid.uuid4().hex[:6]},
                                           {"type": "cardnumber", "value": "BUKL0000022598PR", "seriesId": 46,
                                            "seriesCode": "BUKLPRM", "statusLabel": "NEW CARD"}],
                           "commChannels": [{"type": "mobile", "value": "916360499160", "primary": True,
                                             "verified": True, "meta": {"residence": True, "office": False}}],
                           "source": "WEB_ENGAGE", "accountId": "311c4dd1"}],
             "extendedFields": {"gender": "Male"}}

    response = api.submit([*SEED, third], wait=30)

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"response", "totalCount", "failureCount"}
    assert (body["totalCount"], body["failureCount"]) == (3, 2)
    first, second, partial = body["response"]
    assert first["action"] == "CREATED" and first["errors"] == [] and first["result"]["id"] == first["entityId"]
    assert second["action"] == "FAILED" and second["entityId"] is None and second["result"] is None
    assert partial["action"] == "CREATED" and partial["result"]["id"] == partial["entityId"]
    assert partial["errors"] == [CARD_LABEL_INVALID]
    assert partial["result"]["extendedFields"] == {"gender": "Male"}
    assert partial["result"]["profiles"][0]["commChannels"][0]["value"] == "916360499160"


def test_dual_eligibility_new_customers_are_read_back_by_id(api, sim):
    sim.configure(primaryIdentifier="mobile")
    run = uuid.uuid4().hex[:6]

    job = api.run([customer(f"DUAL-{run}-{i}", f"91{80000000 + i:08d}") for i in range(20)])

    items = api.results(job["jobId"])
    assert (job["failureCount"], job["createdCount"]) == (0, 20)
    assert all(item["action"] == "CREATED" and item["result"]["id"] == item["entityId"] for item in items)
    assert len({item["entityId"] for item in items}) == len(sim.customers()) == 20
    assert calls(sim)["get"] == 20


def test_card_fields_reach_change_identifier_and_the_update_carries_no_identifiers(api, sim):
    ext = "CF-" + uuid.uuid4().hex[:8]
    api.run([customer(ext, unique_digits())])
    card = {"type": "cardnumber", "value": "C-" + ext, "seriesId": 46, "seriesCode": "BUKLPRM", "statusLabel": "ACTIVE"}
    element = customer(ext, unique_digits())
    element["profiles"][0]["identifiers"].append(card)

    (item,) = api.results(api.run([element])["jobId"])

    assert item["action"] == "UPDATED" and item["errors"] == []
    assert item["warnings"] == []  # no 91005 "... cannot be updated": identifiers never go to update
    assert card in item["result"]["profiles"][0]["identifiers"]
    (details,) = item["result"]["cardDetails"]
    assert (details["seriesId"], details["seriesCode"]) == (46, "BUKLPRM")


def test_an_add_whose_answer_was_lost_still_reports_created(sim):
    sim.configure(lostAnswers={"add": 1}, hangSeconds=3)
    client = CapillaryClient(tenant(sim), timeout=0.5)
    journal = MemoryJournal()
    element = customer("LOST-" + uuid.uuid4().hex[:8], unique_digits())

    with pytest.raises(RetryableError):
        upsert_customer(client, element, skip_change_identifier=False, priority=[], journal=journal)
    (stored,) = sim.customers()  # the add landed; only its answer was lost
    again = upsert_customer(client, element, skip_change_identifier=False, priority=[], journal=journal)

    assert again.action == CREATED and again.entity_id == stored["id"] and not again.errors
    assert sim.calls()["byEndpoint"]["add"] == {"200": 1}


def test_an_item_whose_add_answer_was_lost_reports_created_through_the_job_store(api, sim):
    sim.configure(lostAnswers={"add": 1}, hangSeconds=4)  # the worker gives up after 2 s and retries

    job = api.run([customer("LOSTJOB-" + uuid.uuid4().hex[:8], unique_digits())])

    (item,) = api.results(job["jobId"])
    assert item["action"] == "CREATED" and (job["createdCount"], job["failureCount"]) == (1, 0)
    assert [c["id"] for c in sim.customers()] == [item["entityId"]]
    wait_for(lambda: sim.calls()["byEndpoint"]["add"] == {"200": 1}, timeout=10, what="the held add to be logged")


def test_a_thousand_items_under_dual_eligibility_twice(api, sim):
    sim.configure(primaryIdentifier="mobile")
    run = uuid.uuid4().hex[:6]
    elements = []
    for i in range(1000):
        element = customer(f"DE-{run}-{i}", f"91{60000000 + i:08d}")
        # Families share an email: a secondary identifier, no conflict under dual eligibility.
        element["profiles"][0]["identifiers"].append({"type": "email", "value": f"family-{run}-{i // 4}@x.co"})
        elements.append(element)

    first = api.run(elements, timeout=240)
    second = api.run(elements, timeout=240)

    assert (first["failureCount"], first["createdCount"]) == (0, 1000)
    assert (second["failureCount"], second["updatedCount"], second["createdCount"]) == (0, 1000, 0)
    created, updated = api.results(first["jobId"]), api.results(second["jobId"])
    assert [item["entityId"] for item in updated] == [item["entityId"] for item in created]
    assert {item["action"] for item in updated} == {"UPDATED"}
    stored = sim.customers()
    assert len(stored) == len({c["id"] for c in stored}) == 1000
    assert {c["id"] for c in stored} == {item["entityId"] for item in created}
