"""Behaviour of the v2 simulator through Flask's test client, and once over real HTTP (slow)."""

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

ROOT = Path(__file__).resolve().parents[3]
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


@pytest.mark.slow  # starts the simulator's own process
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


# -- fidelity to the reference: lookup types, 8065, cards and 3017, dual eligibility, get by id, lost answers --


def add(client, *identifiers, source="WEB_ENGAGE", account="acc-1", **top):
    profile = {"identifiers": [{"type": t, "value": v, **extra} for t, v, *rest in identifiers
                               for extra in (rest[0] if rest else {},)], "source": source}
    if account is not None:
        profile["accountId"] = account
    return client.post("/v2/customers", json={"profiles": [profile], **top})


def get(client, user_id, source="WEB_ENGAGE", account="acc-1"):
    query = {"source": source} | ({"accountId": account} if account is not None else {})
    return client.get(f"/v2/customers/{user_id}", query_string=query)


@pytest.mark.parametrize("name", ["unionId", "line", "fbId", "martjackId", "cuid", "tmall_uname", "mobilePush"])
def test_lookup_refuses_types_that_only_add_and_change_identifier_take(client, name):
    assert add(client, ("mobile", "919988221100"), (name, "u-1")).status_code == 200

    assert error_codes(lookup(client, "u-1", name=name)) == [8013]
    found = lookup(client, "919988221100").get_json()
    assert {"type": name, "value": "u-1"} in found["profiles"][0]["identifiers"]


def test_lookup_takes_the_six_lookup_types(client):
    keys = [("mobile", "919988221100"), ("email", "a@b.co"), ("externalId", "E1"), ("cardnumber", "C1"),
            ("wechat", "W1")]
    created = add(client, *keys).get_json()["createdId"]
    # cardExternalId is no register type (§1.7): it comes through changeIdentifier.
    url = f"/v2/customers/{created}/changeIdentifier?source=WEB_ENGAGE&accountId=acc-1"
    assert client.post(url, json={"add": [{"type": "cardExternalId", "value": "CE1"}]}).status_code == 200

    for name, value in [*keys, ("cardExternalId", "CE1")]:
        assert lookup(client, value, name=name).get_json()["id"] == created, name


@pytest.mark.parametrize("status", [400, 404, 200])
def test_an_identifier_known_only_in_another_source_or_account_is_8065(status):
    client = make_client(not_found_status=status)
    add(client, ("mobile", "919988221100"), source="INSTORE", account=None)
    add(client, ("email", "a@b.co"), account="acc-2")

    other_source = lookup(client, "919988221100")
    other_account = lookup(client, "a@b.co", name="email")

    for response in (other_source, other_account):
        assert response.status_code == status
        (problem,) = response.get_json()["errors"]
        assert problem == {"status": False, "code": 8065,
                           "message": "No customer found in the given source with the given identifier"}
    assert error_codes(lookup(client, "919900000000")) == [8015]
    assert lookup(client, "919988221100", source="ALL", account=None).status_code == 200
    # Registering it in this source too works, and says it combined.
    again = add(client, ("mobile", "919988221100"))
    assert again.status_code == 200 and [w["code"] for w in again.get_json()["warnings"]] == [8050]


def test_an_unknown_card_status_label_writes_the_customer_but_not_the_card(client):
    card = {"seriesId": 46, "seriesCode": "BUKLPRM", "statusLabel": "NEW CARD"}
    added = add(client, ("externalId", "VISHK"), ("cardnumber", "BUKL0001", card))

    assert added.status_code == 200
    body = added.get_json()
    assert body == {"createdId": body["createdId"], "warnings": [],
                    "errors": [{"status": False, "code": 3017, "message": "status label invalid"}]}
    result = get(client, body["createdId"]).get_json()
    assert result["profiles"][0]["identifiers"] == [{"type": "externalId", "value": "VISHK"}]
    assert result["cardDetails"] == []
    assert error_codes(lookup(client, "BUKL0001", name="cardnumber")) == [8015]


def test_a_known_card_status_label_keeps_the_card_with_its_fields(client):
    card = {"seriesId": 46, "seriesCode": "BUKLPRM", "statusLabel": "active"}
    created = add(client, ("externalId", "VISHK"), ("cardnumber", "BUKL0001", card)).get_json()["createdId"]

    result = lookup(client, "BUKL0001", name="cardnumber").get_json()
    assert result["id"] == created
    assert {"type": "cardnumber", "value": "BUKL0001", **card} in result["profiles"][0]["identifiers"]
    (details,) = result["cardDetails"]
    assert details["cardNumber"] == "BUKL0001" and details["seriesId"] == 46 and details["customerId"] == created
    assert details["statusInfo"] == {"label": "active", "status": "ACTIVE", "isActive": True}


def test_change_identifier_links_the_rest_and_refuses_a_card_with_an_unknown_label(client):
    created = add(client, ("externalId", "VISHK")).get_json()["createdId"]
    url = f"/v2/customers/{created}/changeIdentifier?source=WEB_ENGAGE&accountId=acc-1"
    bad_card = {"type": "cardnumber", "value": "BUKL0001", "seriesCode": "BUKLPRM", "statusLabel": "Lost"}

    partial = client.post(url, json={"add": [bad_card, {"type": "email", "value": "a@b.co"}]})
    only_card = client.post(url, json={"add": [bad_card]})
    good = client.post(url, json={"add": [bad_card | {"statusLabel": "SUSPENDED"}]})

    assert partial.status_code == 200
    assert partial.get_json() == {"createdId": created, "warnings": [],
                                  "errors": [{"status": False, "code": 3017, "message": "status label invalid"}]}
    assert only_card.status_code == 400 and error_codes(only_card) == [3017]
    assert good.status_code == 200 and "errors" not in good.get_json()
    identifiers = get(client, created).get_json()["profiles"][0]["identifiers"]
    assert {"type": "email", "value": "a@b.co"} in identifiers
    assert bad_card | {"statusLabel": "SUSPENDED"} in identifiers


def test_dual_eligibility_only_the_primary_is_unique_and_finds_a_customer():
    client = make_client(primary_identifier="mobile")
    first = add(client, ("mobile", "919900000001"), ("email", "family@x.co"), ("externalId", "E1"))
    second = add(client, ("mobile", "919900000002"), ("email", "family@x.co"), ("externalId", "E1"))
    assert first.status_code == second.status_code == 200, "secondary identifiers may be shared"
    first_id, second_id = first.get_json()["createdId"], second.get_json()["createdId"]

    assert error_codes(lookup(client, "family@x.co", name="email")) == [8015]
    assert error_codes(lookup(client, "E1", name="externalId")) == [8015]
    assert lookup(client, "919900000002").get_json()["id"] == second_id
    picked = lookup(client, "family@x.co,919900000001,E1", name="email,mobile,externalId")
    assert picked.get_json()["id"] == first_id, "a comma list picks the primary"
    assert error_codes(lookup(client, "family@x.co,E1", name="email,externalId")) == [8015]

    assert error_codes(add(client, ("mobile", "919900000001"), ("email", "new@x.co"))) == [8006]
    url = f"/v2/customers/{second_id}/changeIdentifier?source=WEB_ENGAGE&accountId=acc-1"
    taken = client.post(url, json={"add": [{"type": "mobile", "value": "919900000001"}]})
    assert taken.status_code == 400 and error_codes(taken) == [8008]
    shared = client.post(url, json={"add": [{"type": "externalId", "value": "E-shared"}]})
    assert shared.status_code == 200
    other = f"/v2/customers/{first_id}/changeIdentifier?source=WEB_ENGAGE&accountId=acc-1"
    assert client.post(other, json={"add": [{"type": "externalId", "value": "E-shared"}]}).status_code == 200


def test_dual_eligibility_is_switched_by_admin_config_and_the_cli():
    client = make_client()
    assert client.patch("/__admin/config", json={"primaryIdentifier": "mobile"}).get_json()["primaryIdentifier"] == (
        "mobile")
    assert client.patch("/__admin/config", json={"primaryIdentifier": "unionId"}).status_code == 400
    add(client, ("mobile", "919900000001"), ("email", "a@b.co"))
    assert error_codes(lookup(client, "a@b.co", name="email")) == [8015]
    client.patch("/__admin/config", json={"primaryIdentifier": None})
    assert lookup(client, "a@b.co", name="email").status_code == 200

    from simulator.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--primary-identifier", "email"]), {}).primary_identifier == (
        "email")


def test_get_by_id_answers_the_lookup_shape_in_its_own_source_only():
    client = make_client(not_found_status=404)
    created = add(client, ("mobile", "919988221100")).get_json()["createdId"]

    found = get(client, created)
    assert found.status_code == 200 and found.get_json() == lookup(client, "919988221100").get_json()
    for response in (get(client, created, account="acc-2"), get(client, created, source="INSTORE", account=None),
                     get(client, created + 1000)):
        assert response.status_code == 404 and error_codes(response) == [8015]
    blank = client.get("/v2/customers/not-a-number?source=WEB_ENGAGE&accountId=acc-1")
    assert blank.status_code == 400 and blank.data == b""
    assert error_codes(client.get(f"/v2/customers/{created}")) == [8016]
    assert error_codes(get(client, created, source="MARS")) == [8012]
    assert error_codes(get(client, created, account=None)) == [8091]
    counts = client.get("/__admin/calls").get_json()["byEndpoint"]
    assert counts["get"] == {"200": 1, "400": 4, "404": 3} and counts["lookup"] == {"200": 1}


def test_a_lost_answer_is_written_then_held_back_once(client):
    patched = client.patch("/__admin/config", json={"lostAnswers": {"add": 1}, "hangSeconds": 0.3}).get_json()
    assert patched["lostAnswers"] == {"add": 1}

    started = time.monotonic()
    first = add(client, ("mobile", "919988221100"))
    held = time.monotonic() - started
    started = time.monotonic()
    second = add(client, ("mobile", "919911111111"))

    assert held >= 0.3 and time.monotonic() - started < 0.3
    assert first.status_code == second.status_code == 200
    assert client.get("/__admin/config").get_json()["lostAnswers"] == {"add": 0}
    assert client.get("/__admin/customers").get_json()["count"] == 2
    assert client.patch("/__admin/config", json={"lostAnswers": {"nope": 1}}).status_code == 400
    assert client.patch("/__admin/config", json={"lostAnswers": {"add": -1}}).status_code == 400
