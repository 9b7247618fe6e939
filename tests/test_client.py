"""The v2 client against the real simulator: auth, and failures turned into our exception types."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.helpers import SIM_PASSWORD, SIM_TILL
from worker.downstream.client import CapillaryClient, PermanentError, RetryableError, basic_auth_header
from worker.items.upsert import CREATED, FAILED, UPDATED, upsert_customer
from worker.settings import Tenant


def tenant(sim, **overrides) -> Tenant:
    return Tenant(**({"id": "t", "token": "x", "base_url": sim.url, "till": SIM_TILL, "password": SIM_PASSWORD}
                     | overrides))


def profile(ext: str) -> dict:
    return {"profiles": [{"identifiers": [{"type": "externalId", "value": ext}], "source": "INSTORE"}]}


def test_basic_auth_header_matches_the_vendors_worked_example():
    expected = "Basic c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"
    assert basic_auth_header("store.server", "server123") == expected


def test_wrong_basic_credentials_are_a_permanent_error(sim):
    client = CapillaryClient(tenant(sim, password="wrong"), timeout=2)

    with pytest.raises(PermanentError) as caught:
        client.lookup(source="INSTORE", account_id=None, identifier_name="externalId", identifier_value="x")
    assert caught.value.status == 401


def test_oauth_token_is_fetched_once_reused_and_renewed_once_when_expired(sim):
    sim.configure(oauthKey="key-1", oauthSecret="secret-1", tokenTtlSeconds=300)
    client = CapillaryClient(tenant(sim, till="", password="", oauth_key="key-1", oauth_secret="secret-1"), timeout=2)

    first = upsert_customer(client, profile("OA-" + uuid.uuid4().hex), skip_change_identifier=False, priority=[])
    sim.admin("POST", "expire-tokens")
    second = upsert_customer(client, profile("OA-" + uuid.uuid4().hex), skip_change_identifier=False, priority=[])

    assert first.action == second.action == CREATED and not first.errors and not second.errors
    token_calls = sim.calls()["byEndpoint"]["token"]
    assert token_calls == {"200": 2}  # one at start, one renewal after the expiry; none per call
    assert "401" in sim.calls()["byEndpoint"]["lookup"]  # the expired token was refused once, then renewed


@pytest.mark.parametrize(
    ("config", "status"),
    [({"outage": True}, 503), ({"error521Rate": 1.0}, 521), ({"rateLimitRps": 0.001}, 429)],
)
def test_transient_downstream_failures_are_retryable(sim, config, status):
    client = CapillaryClient(tenant(sim), timeout=2)
    sim.configure(**config)

    with pytest.raises(RetryableError) as caught:
        for _ in range(3):  # a rate limit lets its first token through
            client.lookup(source="INSTORE", account_id=None, identifier_name="externalId", identifier_value="x")
    assert caught.value.status == status
    if status == 429:
        assert caught.value.retry_after and caught.value.retry_after >= 1


def test_a_hung_request_is_a_retryable_timeout(sim):
    sim.configure(hangRate=1.0, hangSeconds=3)
    client = CapillaryClient(tenant(sim), timeout=0.3)

    with pytest.raises(RetryableError) as caught:
        client.lookup(source="INSTORE", account_id=None, identifier_name="externalId", identifier_value="x")
    assert "no answer within" in caught.value.message


def test_a_connection_refused_is_retryable():
    client = CapillaryClient(Tenant(id="t", token="x", base_url="http://127.0.0.1:9"), timeout=1)

    with pytest.raises(RetryableError):
        client.add({"profiles": []})


def test_upsert_is_safe_to_repeat_and_fails_on_conflicting_identifiers(sim):
    client = CapillaryClient(tenant(sim), timeout=2)
    a = {"profiles": [{"identifiers": [{"type": "externalId", "value": "A1"}], "source": "INSTORE"}]}
    b = {"profiles": [{"identifiers": [{"type": "mobile", "value": "919900000001"}], "source": "INSTORE"}]}
    both = {"profiles": [{"identifiers": a["profiles"][0]["identifiers"] + b["profiles"][0]["identifiers"],
                          "source": "INSTORE"}]}

    assert upsert_customer(client, a, skip_change_identifier=False, priority=[]).action == CREATED
    assert upsert_customer(client, a, skip_change_identifier=False, priority=[]).action == UPDATED
    assert upsert_customer(client, b, skip_change_identifier=False, priority=[]).action == CREATED
    conflict = upsert_customer(client, both, skip_change_identifier=False, priority=[])

    assert conflict.action == FAILED and conflict.errors[0]["code"] == 8052
    assert "different customers" in conflict.errors[0]["message"]
    assert len(sim.customers()) == 2
    assert sum(sim.calls()["byEndpoint"]["changeIdentifier"].values()) == 0


class RacedClient(CapillaryClient):
    """A client whose first add loses a race: another writer adds the same customer just before it."""

    def __init__(self, tenant_: Tenant, rival: dict) -> None:
        super().__init__(tenant_, timeout=2)
        self._rival = rival

    def add(self, body: dict, **kwargs):
        if self._rival is not None:
            rival, self._rival = self._rival, None
            assert CapillaryClient(self.tenant, timeout=2).add(rival).body.get("createdId")
        return super().add(body, **kwargs)


def test_an_add_that_loses_a_race_falls_back_to_updating_the_winner(sim):
    ext = "RACE-" + uuid.uuid4().hex
    ours = profile(ext)
    ours["profiles"][0]["firstName"] = "Ours"
    theirs = profile(ext)
    theirs["profiles"][0]["firstName"] = "Theirs"
    client = RacedClient(tenant(sim), rival=theirs)

    outcome = upsert_customer(client, ours, skip_change_identifier=False, priority=[])

    assert outcome.action == UPDATED and not outcome.errors
    assert sim.calls()["byEndpoint"]["add"] == {"200": 1, "400": 1}  # the rival's add, then our 8006
    stored = [c for c in sim.customers() if c["profiles"][0]["identifiers"][0]["value"] == ext]
    assert len(stored) == 1 and stored[0]["profiles"][0]["firstName"] == "Ours"
    assert outcome.result["profiles"][0]["firstName"] == "Ours"


def test_a_new_customer_costs_one_lookup_per_identifier_one_add_and_one_read_back_by_id(sim):
    client = CapillaryClient(tenant(sim), timeout=2)
    element = {"profiles": [{"identifiers": [{"type": "externalId", "value": "NEW-" + uuid.uuid4().hex},
                                             {"type": "mobile", "value": "919900000077"}], "source": "INSTORE"}]}

    outcome = upsert_customer(client, element, skip_change_identifier=False, priority=[])

    assert outcome.action == CREATED and outcome.result["id"] == outcome.entity_id
    by_endpoint = sim.calls()["byEndpoint"]
    assert by_endpoint["lookup"] == {"400": 2} and by_endpoint["add"] == {"200": 1}
    assert by_endpoint["get"] == {"200": 1}
    assert by_endpoint["update"] == by_endpoint["changeIdentifier"] == {}


class CannedServer(ThreadingHTTPServer):
    """A real HTTP server on a free port that answers from canned ``(status, body)`` pairs keyed by the
    start of ``"METHOD /path"`` (the longest key that matches wins), for answers the simulator never
    gives."""

    daemon_threads = True

    def __init__(self, answers: dict[str, tuple[int, bytes | dict]]) -> None:
        self.answers = answers

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                call = f"{self.command} {urlsplit(self.path).path}"
                status, body = answers[max((k for k in answers if call.startswith(k)), key=len)]
                raw = json.dumps(body).encode() if isinstance(body, dict) else body
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = answer

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def canned_client():
    servers: list[CannedServer] = []

    def make(answers: dict[str, tuple[int, bytes | dict]]) -> CapillaryClient:
        servers.append(CannedServer(answers))
        return CapillaryClient(Tenant(id="t", token="x", base_url=servers[-1].url), timeout=2, quick_retries=0)

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "kind", "says"),
    [
        (400, b"", PermanentError, "HTTP 400 with an empty body"),
        (404, b"<html><body>Not Found</body></html>", PermanentError, "HTTP 404 with a body that is not a JSON object: "
                                                                      "'<html><body>Not Found</body></html>'"),
        (200, b"[1, 2]", PermanentError, "HTTP 200 with a body that is not a JSON object: '[1, 2]'"),
        (500, b"x" * 200, RetryableError, "HTTP 500 with a body that is not a JSON object: '" + "x" * 80 + "'..."),
        (500, {"errors": [{"status": False, "code": 500, "message": "Requests have failed due to errors"}]},
         RetryableError, "HTTP 500: Requests have failed due to errors"),
        (507, b"", RetryableError, "HTTP 507 with an empty body"),
    ],
)
def test_answers_without_a_usable_body_are_errors_that_say_what_came_back(canned_client, status, body, kind, says):
    client = canned_client({"GET": (status, body)})

    with pytest.raises(kind) as caught:
        client.lookup(source="INSTORE", account_id=None, identifier_name="mobile", identifier_value="919900000001")
    assert type(caught.value) is kind and caught.value.status == status
    assert caught.value.message == f"lookup: downstream answered {says}"


@pytest.mark.parametrize("status", [200, 400, 404])
@pytest.mark.parametrize("code", [8015, 8065])
def test_not_found_is_decided_on_the_code_whatever_the_status_and_the_company(canned_client, status, code):
    merged = {"status": False, "code": 8069, "message": "Merged customer found"}
    not_found = {"errors": [merged, {"status": False, "code": code, "message": "not here"}], "warnings": [merged]}
    customer = {"id": 7, "profiles": [{"userId": 7, "source": "INSTORE", "accountId": "", "identifiers": [
        {"type": "mobile", "value": "919900000001"}]}]}
    client = canned_client({"GET /v2/customers/lookup": (status, not_found),
                            "POST /v2/customers": (200, {"createdId": 7}), "GET /v2/customers/": (200, customer)})
    element = {"profiles": [{"identifiers": [{"type": "mobile", "value": "919900000001"}], "source": "INSTORE"}]}

    outcome = upsert_customer(client, element, skip_change_identifier=False, priority=[])

    assert outcome.action == CREATED and outcome.entity_id == 7 and not outcome.errors


def test_one_client_serves_many_threads_at_once(sim):
    """The worker's threads share one client per tenant (each thread with a connection of its own): 32
    threads calling at once each get their own answer."""
    client = CapillaryClient(tenant(sim), timeout=5)
    values = [f"T-{uuid.uuid4().hex[:8]}-{n}" for n in range(64)]

    with ThreadPoolExecutor(32) as pool:
        added = list(pool.map(lambda v: client.add(profile(v)).body["createdId"], values))
        found = list(pool.map(lambda v: client.lookup(source="INSTORE", account_id=None, identifier_name="externalId",
                                                       identifier_value=v).body["id"], values))
    assert found == added and len(set(added)) == 64
