"""Behaviour of the v2 simulator, mostly through Flask's test client, once over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from simulator.app import create_app
from simulator.auth import basic_header
from simulator.config import SimulatorConfig

ROOT = Path(__file__).resolve().parents[1]
LOOKUP = "/v2/customers/lookup/customerDetails"


def make_client(**settings):
    return create_app(SimulatorConfig(**settings)).test_client()


@pytest.fixture
def client():
    return make_client()


def customer(mobile="919988221100", source="WEB_ENGAGE", account="acc-1", **top):
    profile = {
        "firstName": "Tom",
        "lastName": "Sawyer",
        "identifiers": [
            {"type": "mobile", "value": mobile},
            {"type": "externalId", "value": f"ext-{mobile}"},
        ],
        "commChannels": [{"type": "mobile", "value": mobile, "primary": True, "verified": "true"}],
        "fields": {"dateofbirth": "22-10-2000"},
        "source": source,
    }
    if account is not None:
        profile["accountId"] = account
    return {"profiles": [profile], "extendedFields": {"gender": "Male"}, **top}


def lookup(client, value, name="mobile", source="WEB_ENGAGE", account="acc-1", **kwargs):
    query = {"source": source, "identifierName": name, "identifierValue": value}
    if account is not None:
        query["accountId"] = account
    return client.get(LOOKUP, query_string=query, **kwargs)


def error_codes(response):
    return [item["code"] for item in response.get_json()["errors"]]


def test_add_then_lookup_returns_the_lookup_shape(client):
    body = customer(statusLabel="Active", subscriptionInfo={"subscriptions": [{"channel": "ios"}]})
    added = client.post("/v2/customers", json=body)
    assert added.status_code == 200
    created_id = added.get_json()["createdId"]
    assert added.get_json() == {"createdId": created_id, "warnings": [], "sideEffects": []}

    found = lookup(client, "919988221100")
    assert found.status_code == 200
    result = found.get_json()
    assert result["id"] == created_id
    profile = result["profiles"][0]
    assert profile["userId"] == created_id
    assert (profile["firstName"], profile["lastName"], profile["source"]) == ("Tom", "Sawyer", "WEB_ENGAGE")
    assert profile["accountId"] == "acc-1"
    assert {"type": "mobile", "value": "919988221100"} in profile["identifiers"]
    assert profile["identifiersAll"] == profile["identifiers"]
    assert profile["commChannels"][0]["verified"] is True
    assert profile["commChannels"][0]["meta"] == {"residence": False, "office": False}
    assert profile["attribution"]["createdBy"]["type"] == "TILL"
    assert profile["conflictingProfileList"] == []
    assert profile["fields"] == profile["allFields"] == {"dateofbirth": "22-10-2000"}
    assert result["loyaltyInfo"]["loyaltyType"] == "loyalty"
    assert result["loyaltyInfo"]["attributionV2"]["createdFromSource"] == "WEB_ENGAGE"
    assert result["extendedFields"] == {"gender": "Male"}
    assert result["segments"] == {} and result["cardDetails"] == [] and result["warnings"] == []
    assert result["statusLabel"] == "Active"
    assert result["subscriptionInfo"] == {"subscriptions": [{"channel": "ios"}]}

    dump = client.get("/__admin/customers").get_json()
    assert dump["count"] == 1 and dump["customers"][0] == result


def test_same_identifier_same_account_is_8006_other_account_is_a_new_customer(client):
    first = client.post("/v2/customers", json=customer()).get_json()["createdId"]
    again = client.post("/v2/customers", json=customer())
    assert again.status_code == 400
    assert error_codes(again) == [8006]
    assert str(first) in again.get_json()["errors"][0]["message"]

    other = client.post("/v2/customers", json=customer(account="acc-2"))
    assert other.status_code == 200
    assert other.get_json()["createdId"] != first
    assert client.get("/__admin/customers").get_json()["count"] == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (customer(source=None), 8004),
        (customer(source="NOWHERE"), 3217),
        (customer(account=None), 8045),
        (customer(mobile="12"), 8014),
        (customer(statusLabel="Sleepy"), 8086),
        ({"profiles": [{"identifiers": [], "source": "INSTORE"}]}, 8005),
    ],
)
def test_add_validation_errors(client, body, code):
    response = client.post("/v2/customers", json=body)
    assert response.status_code == 400
    assert error_codes(response) == [code]


def test_non_object_bodies_are_400_not_500(client):
    for data in ("not json", "[1, 2]", "null"):
        response = client.post("/v2/customers", data=data, content_type="application/json")
        assert response.status_code == 400
        assert response.get_json()["errors"]


@pytest.mark.parametrize("status", [400, 404, 200])
def test_lookup_not_found_uses_the_configured_status(status):
    response = lookup(make_client(not_found_status=status), "919900000000")
    assert response.status_code == status
    assert response.get_json() == {
        "errors": [
            {"status": False, "code": 8015, "message": "Customer not found for the given identifiers"}
        ],
        "warnings": [],
    }


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"identifierName": "mobile", "identifierValue": "1"}, 8001),
        ({"source": "MARS", "identifierName": "mobile", "identifierValue": "1"}, 8003),
        ({"source": "INSTORE"}, 8002),
        ({"source": "INSTORE", "identifierName": "shoeSize", "identifierValue": "1"}, 8013),
        ({"source": "WEB_ENGAGE", "identifierName": "mobile", "identifierValue": "1"}, 8015),
    ],
)
def test_lookup_validation(client, query, code):
    assert error_codes(client.get(LOOKUP, query_string=query)) == [code]


def test_update_changes_names_and_merges_extended_fields(client):
    created_id = client.post("/v2/customers", json=customer()).get_json()["createdId"]
    body = {
        "profiles": [{"firstName": "Thomas", "fields": {"city": "Hannibal"}}],
        "extendedFields": {"city": "Bangalore"},
    }
    response = client.put(f"/v2/customers/{created_id}?source=WEB_ENGAGE&accountId=acc-1", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"createdId": created_id, "warnings": [], "sideEffects": []}

    result = lookup(client, "919988221100").get_json()
    profile = result["profiles"][0]
    assert (profile["firstName"], profile["lastName"]) == ("Thomas", "Sawyer")
    assert profile["fields"] == {"dateofbirth": "22-10-2000", "city": "Hannibal"}
    assert result["extendedFields"] == {"gender": "Male", "city": "Bangalore"}
    assert [i["value"] for i in profile["identifiers"]] == ["919988221100", "ext-919988221100"]


def test_update_rules(client):
    created_id = client.post("/v2/customers", json=customer()).get_json()["createdId"]
    url = f"/v2/customers/{created_id}?source=WEB_ENGAGE&accountId=acc-1"
    downgrade = client.put(url, json={"loyaltyInfo": {"loyaltyType": "non_loyalty"}})
    assert downgrade.status_code == 400 and error_codes(downgrade) == [8018]
    assert error_codes(client.put(url, json={"statusLabel": "nope"})) == [8086]
    assert error_codes(client.put(f"/v2/customers/{created_id}?source=WEB_ENGAGE", json={})) == [8045]
    missing = client.put("/v2/customers/999?source=INSTORE", json={})
    assert missing.status_code == 400 and error_codes(missing) == [8015]


def test_non_loyalty_may_become_loyalty(client):
    body = customer(loyaltyInfo={"loyaltyType": "non_loyalty"})
    created_id = client.post("/v2/customers", json=body).get_json()["createdId"]
    url = f"/v2/customers/{created_id}?source=WEB_ENGAGE&accountId=acc-1"
    assert client.put(url, json={"loyaltyInfo": {"loyaltyType": "loyalty"}}).status_code == 200
    assert lookup(client, "919988221100").get_json()["loyaltyInfo"]["loyaltyType"] == "loyalty"


def test_change_identifier_moves_a_mobile(client):
    created_id = client.post("/v2/customers", json=customer()).get_json()["createdId"]
    url = f"/v2/customers/{created_id}/changeIdentifier?source=WEB_ENGAGE&accountId=acc-1"
    body = {
        "add": [{"type": "mobile", "value": "919900000001"}],
        "remove": [{"type": "mobile", "value": "919988221100"}, {"type": "email", "value": "never@had.it"}],
    }
    response = client.post(url, json=body)
    assert response.status_code == 200
    assert response.get_json() == {"createdId": created_id, "warnings": []}

    assert error_codes(lookup(client, "919988221100")) == [8015]
    moved = lookup(client, "919900000001")
    assert moved.status_code == 200 and moved.get_json()["id"] == created_id

    again = client.post(url, json={"add": [{"type": "mobile", "value": "919900000001"}]})
    assert again.status_code == 200
    assert [w["code"] for w in again.get_json()["warnings"]] == [8071]


def test_change_identifier_errors(client):
    first = client.post("/v2/customers", json=customer()).get_json()["createdId"]
    second = client.post("/v2/customers", json=customer(mobile="919911111111")).get_json()["createdId"]
    url = f"/v2/customers/{second}/changeIdentifier?source=WEB_ENGAGE&accountId=acc-1"

    taken = client.post(
        url,
        json={
            "add": [{"type": "email", "value": "new@x.com"}, {"type": "mobile", "value": "919988221100"}],
            "remove": [{"type": "mobile", "value": "919911111111"}],
        },
    )
    assert taken.status_code == 400 and error_codes(taken) == [8008]
    assert lookup(client, "919911111111").get_json()["id"] == second, "a failed change must change nothing"
    assert error_codes(lookup(client, "new@x.com", name="email")) == [8015]
    assert lookup(client, "919988221100").get_json()["id"] == first

    assert error_codes(client.post(url, json={"add": [], "remove": []})) == [8070]
    unknown = client.post(
        "/v2/customers/42/changeIdentifier?source=WEB_ENGAGE&accountId=acc-1",
        json={"add": [{"type": "email", "value": "a@b.co"}]},
    )
    assert error_codes(unknown) == [8009]
    no_account = f"/v2/customers/{second}/changeIdentifier?source=WEB_ENGAGE"
    assert error_codes(client.post(no_account, json={"add": [{"type": "email", "value": "a@b.co"}]})) == [
        8045
    ]


def test_basic_auth():
    client = make_client(till="store.server", password="server123")
    assert lookup(client, "1").status_code == 401
    wrong = {"Authorization": basic_header("store.server", "server124")}
    denied = lookup(client, "1", headers=wrong)
    assert denied.status_code == 401 and error_codes(denied) == [401]
    # The reference's worked example: store.server / server123.
    right = {"Authorization": "Basic c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"}
    assert right["Authorization"] == basic_header("store.server", "server123")
    assert lookup(client, "1", headers=right).status_code == 400
    added = client.post("/v2/customers", json=customer(), headers=right).get_json()
    result = lookup(client, "919988221100", headers=right).get_json()
    assert result["id"] == added["createdId"]
    assert result["profiles"][0]["attribution"]["createdBy"]["code"] == "store.server"


def test_oauth_token_generate_use_and_expire():
    client = make_client(oauth_key="k", oauth_secret="s", token_ttl_seconds=120)
    bad = client.post("/v3/oauth/token/generate", json={"key": "k", "secret": "nope"})
    assert bad.status_code == 401
    assert bad.get_json() == {
        "data": None,
        "errors": [{"status": False, "code": 1, "message": "Invalid key or secret"}],
    }

    issued = client.post("/v3/oauth/token/generate", json={"key": "k", "secret": "s"}).get_json()
    assert issued["errors"] is None and issued["data"]["ttlSeconds"] == 120
    headers = {"X-CAP-API-OAUTH-TOKEN": issued["data"]["accessToken"]}
    assert lookup(client, "1", headers=headers).status_code == 400
    assert lookup(client, "1", headers={"X-CAP-API-OAUTH-TOKEN": "forged"}).status_code == 401

    assert client.post("/__admin/expire-tokens").status_code == 200
    assert lookup(client, "1", headers=headers).status_code == 401

    counts = client.get("/__admin/calls").get_json()["byEndpoint"]
    assert counts["token"] == {"200": 1, "401": 1}
    assert counts["lookup"] == {"400": 1, "401": 2}


def test_outage_and_admin_config(client):
    patched = client.patch("/__admin/config", json={"outage": True, "password": "pw", "till": "t"})
    assert patched.status_code == 200
    config = patched.get_json()
    assert config["outage"] is True and config["passwordSet"] is True and "pw" not in str(config)
    response = lookup(client, "1")
    assert response.status_code == 503 and error_codes(response) == [503]
    assert client.get("/__admin/health").get_json() == {"ok": True}

    assert client.patch("/__admin/config", json={"errorRate": 2}).status_code == 400
    assert client.patch("/__admin/config", json={"notFoundStatus": 500}).status_code == 400
    assert client.patch("/__admin/config", json={"bogus": 1}).status_code == 400
    assert client.get("/__admin/config").get_json()["errorRate"] == 0.0


def test_random_faults_are_503_and_521():
    assert lookup(make_client(error_rate=1.0), "1").status_code == 503
    busy = lookup(make_client(error_521_rate=1.0), "1")
    assert busy.status_code == 521 and error_codes(busy) == [521]


def test_global_rate_limit_answers_429_with_retry_after(client):
    client.patch("/__admin/config", json={"rateLimitRps": 0.01})
    assert lookup(client, "1").status_code == 400
    refused = lookup(client, "1")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert client.get("/__admin/calls").get_json()["byEndpoint"]["lookup"] == {"400": 1, "429": 1}


def test_per_endpoint_rate_limit_only_limits_that_endpoint():
    client = make_client(rate_limits={"add": 0.6})
    assert client.post("/v2/customers", json=customer()).status_code == 200
    refused = client.post("/v2/customers", json=customer(mobile="919911111111"))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert lookup(client, "919988221100").status_code == 200
    assert lookup(client, "919988221100").status_code == 200


def test_call_counts_log_and_reset(client):
    before = time.time()
    client.post("/v2/customers", json=customer())
    client.post("/v2/customers", json=customer())
    lookup(client, "919988221100")
    summary = client.get("/__admin/calls").get_json()
    assert summary["total"] == 3
    assert summary["byEndpoint"]["add"] == {"200": 1, "400": 1}
    assert summary["byEndpoint"]["lookup"] == {"200": 1}
    calls = client.get("/__admin/calls/log").get_json()["calls"]
    assert [(c["endpoint"], c["status"]) for c in calls] == [("add", 200), ("add", 400), ("lookup", 200)]
    assert all(c["t"] >= before for c in calls)

    client.post("/__admin/reset")
    assert client.get("/__admin/calls").get_json()["total"] == 0
    assert client.get("/__admin/customers").get_json() == {"customers": [], "count": 0}
    assert client.post("/v2/customers", json=customer()).status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_over_real_http():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SIMULATOR_TILL": "till.one", "SIMULATOR_PASSWORD": "secret"}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", str(port), "--not-found-status", "404"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(f"{base}/__admin/health", timeout=1).json() == {"ok": True}:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "simulator did not become healthy"
            time.sleep(0.05)

        session = requests.Session()
        session.headers["Authorization"] = basic_header("till.one", "secret")
        added = session.post(f"{base}/v2/customers", json=customer(), timeout=5)
        assert added.status_code == 200
        query = {"source": "WEB_ENGAGE", "accountId": "acc-1", "identifierName": "mobile"}
        found = session.get(f"{base}{LOOKUP}", params={**query, "identifierValue": "919988221100"}, timeout=5)
        assert found.status_code == 200 and found.json()["id"] == added.json()["createdId"]
        missing = session.get(f"{base}{LOOKUP}", params={**query, "identifierValue": "1"}, timeout=5)
        assert missing.status_code == 404
        assert requests.get(f"{base}{LOOKUP}", params=query, timeout=5).status_code == 401
    finally:
        process.terminate()
        stdout, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert f"simulator listening on {base}" in stdout
