"""A CSV file, as a brand's export gives it, through the intake, a real worker and the simulator."""

from __future__ import annotations

import io

import pytest

from api.openapi import Item
from tests.helpers import JOBS, TOKEN

pytestmark = pytest.mark.usefixtures("worker")

HEADER = "firstName,lastName,source,accountId,identifiers.externalId,identifiers.mobile,commChannels.email,"\
         "extendedFields.gender,customFields.city"


def post_csv(app, body: bytes, **query):
    return app.test_client().post(f"{JOBS}/bulk", input_stream=io.BytesIO(body), content_length=len(body),
                                  content_type="text/csv", query_string=query,
                                  headers={"Authorization": f"Bearer {TOKEN}"})


def test_a_thousand_row_csv_creates_every_customer_and_fails_the_row_without_identifiers(app, api, sim):
    rows = []
    for i in range(1000):
        last = '"O""Brien, Jr."' if i == 0 else "Last"  # a quoted comma and a doubled quote
        city = "" if i == 1 else "Pune"  # an empty cell is left out
        rows.append(f"First{i},{last},WEB_ENGAGE,acc1,CSV-{i},91{81000000 + i:08d},u{i}@example.com,Female,{city}")
    rows.insert(500, "Nobody,Else,WEB_ENGAGE,acc1,,,,,")  # row 502: no identifiers
    body = ("\ufeff" + HEADER + "\r\n" + "\r\n".join(rows) + "\r\n").encode()

    response = post_csv(app, body)
    assert response.status_code == 202, response.get_json()
    job = api.wait(response.get_json()["jobId"], timeout=120)

    assert (job["totalCount"], job["createdCount"], job["failureCount"]) == (1001, 1000, 1)
    (failed,) = api.results(job["jobId"], outcome="failed")
    assert failed["index"] == 500
    assert Item().validate(failed) == {}  # row and column are in the OpenAPI document
    assert failed["errors"][0]["row"] == 502 and failed["errors"][0]["message"].startswith("row 502, column ")
    first = api.results(job["jobId"])[0]["result"]
    assert first["profiles"][0]["lastName"] == 'O"Brien, Jr.'
    assert first["profiles"][0]["fields"] == {"city": "Pune"}
    assert first["extendedFields"]["gender"] == "Female"
    second = api.results(job["jobId"])[1]["result"]
    assert "city" not in second["profiles"][0]["fields"]
    assert len(sim.customers()) == 1000


def test_a_csv_with_an_unknown_column_is_a_400_naming_it_and_queues_nothing(app, api):
    before = {job["jobId"] for job in api.get("/jobs", limit=100).get_json()["jobs"]}

    response = post_csv(app, b"firstName,identifiers.mobile,mobileNumber\r\nAnn,919800000001,1\r\n")

    assert response.status_code == 400
    error = response.get_json()["errors"][0]
    assert (error["code"], error["field"]) == ("unknown_column", "mobileNumber")
    assert "'mobileNumber'" in error["message"]
    assert {job["jobId"] for job in api.get("/jobs", limit=100).get_json()["jobs"]} == before


def test_the_csv_example_runs_as_the_seed_example_does(app, api, sim):
    from pathlib import Path

    body = (Path(__file__).resolve().parents[1] / "examples" / "seed-batch.csv").read_bytes()

    job = api.wait(post_csv(app, body).get_json()["jobId"])

    assert (job["totalCount"], job["createdCount"], job["failureCount"]) == (2, 1, 1)
    created, failed = api.results(job["jobId"])
    assert created["result"]["extendedFields"]["gender"] == "Male"
    assert failed["errors"][0]["row"] == 3 and "column source" in failed["errors"][0]["message"]
