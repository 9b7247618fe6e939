"""Hostile input and tenants: clear errors, nothing lost, no one in where they do not belong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from api.app import create_app
from tests.helpers import (
    JOBS,
    TOKEN,
    ApiClient,
    RedisServer,
    Simulator,
    Worker,
    make_settings,
    simulator_tenant,
    tenants_file,
    wait_for,
)
from worker.dispatch.scheduler import CALLBACK_HOLD_SECONDS
from worker.settings import Settings
from worker.store import keys

GOOD = [{"profiles": [{"identifiers": [{"type": "externalId", "value": "H1"}], "source": "INSTORE"}]}]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def nested(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def post(client, body: bytes, *, content_type: str = "application/json", query: str = "", headers=None):
    return client.post(f"{JOBS}/bulk{query}", data=body, content_type=content_type, headers=headers or AUTH)


HOSTILE = [
    # (name, request, status, words the message must contain, field)
    ("no token", lambda c: c.post(f"{JOBS}/bulk", json=GOOD), 401, "Bearer", None),
    ("wrong token", lambda c: c.post(f"{JOBS}/bulk", json=GOOD, headers={"Authorization": "Bearer x"}), 401,
     "not valid", None),
    ("not JSON", lambda c: post(c, b"hello"), 400, "not valid JSON", "body"),
    ("object, not array", lambda c: post(c, b'{"profiles": []}'), 400, "JSON array", "body"),
    ("empty array", lambda c: post(c, b"[]"), 400, "empty", "body"),
    ("array of numbers", lambda c: post(c, b"[1, 2, 3]"), 202, "", None),  # each number fails alone
    ("skipChangeIdentifier=maybe", lambda c: post(c, json.dumps(GOOD).encode(), query="?skipChangeIdentifier=maybe"),
     400, "true or false", "skipChangeIdentifier"),
    ("10,000-deep nesting", lambda c: post(c, b"[" * 10_000 + b"]" * 10_000), 400, "deep", "body"),
    ("33-deep element", lambda c: post(c, json.dumps([{"a": nested(32)}]).encode()), 400, "deeper than",
     "[0].a" + "[0]" * 31),
    ("a 5 MB string", lambda c: post(c, json.dumps([{"profiles": [], "note": "x" * 5_000_000}]).encode()), 400,
     "longer than", "[0].note"),
    ("a 5 MB key", lambda c: post(c, json.dumps([{"profiles": [], "x" * 5_000_000: 1}]).encode()), 400,
     "key longer than", "[0]"),
    ("NUL bytes", lambda c: post(c, b'[{"profiles": [\x00]}]'), 400, "not valid JSON", "body"),
    ("wrong content type", lambda c: post(c, json.dumps(GOOD).encode(), content_type="text/plain"), 415,
     "Content-Type", "Content-Type"),
    ("form body", lambda c: c.post(f"{JOBS}/bulk", data={"a": "b"}, headers=AUTH), 415, "Content-Type",
     "Content-Type"),
    ("bad NDJSON line", lambda c: post(c, b'{"profiles": []}\n{oops\n', content_type="application/x-ndjson"), 400,
     "line 2", "line 2"),
    ("negative offset", lambda c: c.get(f"{JOBS}/jobs/{'0' * 32}/results?offset=-1", headers=AUTH), 404, "no job",
     "jobId"),
    ("unknown job id", lambda c: c.get(f"{JOBS}/jobs/{'a' * 32}", headers=AUTH), 404, "no job", "jobId"),
    ("path traversal job id", lambda c: c.get(f"{JOBS}/jobs/..%2F..%2Fetc%2Fpasswd", headers=AUTH), 404, "", None),
    ("absurd wait", lambda c: post(c, json.dumps(GOOD).encode(), query="?wait=1e309"), 400, "between", "wait"),
    ("callback without allowed hosts", lambda c: post(c, json.dumps(GOOD).encode(),
                                                      query="?callbackUrl=http://169.254.169.254/latest"), 400,
     "not enabled", "callbackUrl"),
]


@pytest.mark.parametrize(("name", "make_request", "status", "words", "field"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_a_clear_4xx_and_the_service_stays_healthy(app, name, make_request, status, words,
                                                                        field):
    client = app.test_client()

    response = make_request(client)

    assert response.status_code == status, response.get_data(as_text=True)[:300]
    if status >= 400:
        (error,) = response.get_json()["errors"]
        assert words in error["message"]
        if field is not None:
            assert error["field"] == field
    assert client.get("/readyz").status_code == 200
    assert client.get(f"{JOBS}/jobs", headers=AUTH).status_code == 200


def test_paging_parameters_are_checked_on_an_existing_job(api, sim, worker):
    job_id = api.run(GOOD)["jobId"]  # waited for, so no call of it lands in a later test

    for query, field in (({"offset": -1}, "offset"), ({"limit": 10**9}, "limit"), ({"outcome": "x"}, "outcome"),
                         ({"format": "xml"}, "format")):
        response = api.get(f"/jobs/{job_id}/results", **query)
        assert response.status_code == 400 and response.get_json()["errors"][0]["field"] == field


def test_ndjson_submission_is_one_customer_per_line(api, sim, worker):
    lines = b"\n".join(json.dumps(e).encode() for e in GOOD * 3) + b"\n\n"
    response = api.client.post(f"{JOBS}/bulk", data=lines, content_type="application/x-ndjson", headers=AUTH)

    assert response.status_code == 202
    job = api.wait(response.get_json()["jobId"])
    assert (job["totalCount"], job["failureCount"]) == (3, 0)


def test_validation_errors_name_the_path_in_the_submission(api, sim, worker):
    bad = {"profiles": [{"firstName": "x" * 101, "identifiers": [{"type": "externalId", "value": "V1"},
                                                                 {"type": "email", "value": "not-an-email"}],
                         "source": "INSTORE", "commChannels": [{"type": "email", "value": "a@b.co",
                                                                "primary": "true"}], "custom": {"kept": 1}}]}

    job = api.run([GOOD[0], GOOD[0], GOOD[0], bad])

    item = api.results(job["jobId"])[3]
    fields = {e["field"]: e["code"] for e in item["errors"]}
    assert fields == {"[3].profiles[0].firstName": 8084, "[3].profiles[0].identifiers[1].value": 8055}
    assert item["input"] == bad


# -- idempotency ------------------------------------------------------------------------------------


def test_the_same_idempotency_key_returns_the_first_job_and_another_body_is_409(idle_app):
    app, broker = idle_app
    api = ApiClient(app)
    key = {"Idempotency-Key": "batch-" + uuid.uuid4().hex}

    first = api.client.post(f"{JOBS}/bulk", json=GOOD, headers=AUTH | key)
    again = api.client.post(f"{JOBS}/bulk", json=GOOD, headers=AUTH | key)
    other = api.client.post(f"{JOBS}/bulk", json=GOOD * 2, headers=AUTH | key)

    assert first.status_code == again.status_code == 202
    assert again.get_json()["jobId"] == first.get_json()["jobId"]
    assert broker.zcard("cu:sched:jobs") == 1  # one job for the dispatcher: nothing queued again
    assert other.status_code == 409 and "different body" in other.get_json()["errors"][0]["message"]


@pytest.fixture
def idle_app(tmp_path, simulator):
    import redis

    server = RedisServer(tmp_path).start()
    yield create_app(make_settings(server.url, simulator.url)), redis.Redis.from_url(server.url)
    server.stop()


# -- tenants ----------------------------------------------------------------------------------------


def test_two_tenants_reach_only_their_own_downstream_and_see_only_their_own_jobs(tmp_path, simulator):
    other_sim = Simulator(tmp_path, "--oauth-key", "k2", "--oauth-secret", "s2")
    redis_server = RedisServer(tmp_path).start()
    tenants = tenants_file(tmp_path / "tenants.toml", north=simulator_tenant("token-north", simulator.url),
                           south={"token": "token-south", "capillary_base_url": other_sim.url, "oauth_key": "k2",
                                  "oauth_secret": "s2"})
    settings = make_settings(redis_server.url, simulator.url, tenants_file=str(tenants), upsert_api_token="")
    worker = Worker(settings, tmp_path / "worker.log")
    client = create_app(settings).test_client()
    try:
        simulator.reset()
        other_sim.reset()
        north = {"Authorization": "Bearer token-north"}
        south = {"Authorization": "Bearer token-south"}
        n = client.post(f"{JOBS}/bulk", json=[_c("N1"), _c("N2")], headers=north).get_json()["jobId"]
        s = client.post(f"{JOBS}/bulk", json=[_c("S1")], headers=south).get_json()["jobId"]
        for job_id, headers in ((n, north), (s, south)):
            wait_for(lambda j=job_id, h=headers: client.get(f"{JOBS}/jobs/{j}", headers=h).get_json().get("finishedAt"),
                     timeout=60, what="tenant job")

        assert {c["profiles"][0]["identifiers"][0]["value"] for c in simulator.customers()} == {"N1", "N2"}
        assert {c["profiles"][0]["identifiers"][0]["value"] for c in other_sim.customers()} == {"S1"}
        assert other_sim.calls()["byEndpoint"]["token"] == {"200": 1}  # OAuth for south, once
        for path in (f"/jobs/{n}", f"/jobs/{n}/results"):
            assert client.get(JOBS + path, headers=south).status_code == 404
        assert client.delete(f"{JOBS}/jobs/{n}", headers=south).status_code == 404
        assert [j["jobId"] for j in client.get(f"{JOBS}/jobs", headers=south).get_json()["jobs"]] == [s]
        assert client.get(f"{JOBS}/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    finally:
        worker.stop()
        redis_server.stop()
        other_sim.stop()


def _c(ext: str) -> dict:
    return {"profiles": [{"identifiers": [{"type": "externalId", "value": ext}], "source": "INSTORE"}]}


def _decoded(raw: bytes) -> tuple[list, dict]:
    """The args and kwargs of a Celery message as kombu's Redis transport stores it."""
    body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return body[0], body[1]


def test_queue_messages_carry_the_job_and_tenant_ids_and_never_a_credential(tmp_path, simulator):
    import redis

    from worker.celery_app import create_celery
    from worker.dispatch.leases import LeaseKeeper
    from worker.dispatch.publishing import publish
    from worker.dispatch.scheduler import Dispatcher

    redis_server = RedisServer(tmp_path).start()
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f"""
[tenants.north]
token = "token-north-secret"
capillary_base_url = "{simulator.url}"
till = "north.till"
password = "password-north-secret"
webhook_secret = "webhook-north-secret"
""")
    settings = make_settings(redis_server.url, simulator.url, tenants_file=str(tenants), upsert_api_token="")
    try:
        client = create_app(settings).test_client()
        job_id = client.post(f"{JOBS}/bulk", json=[_c("Q1"), _c("Q2"), _c("Q1")],
                             headers={"Authorization": "Bearer token-north-secret"}).get_json()["jobId"]
        broker = redis.Redis.from_url(redis_server.url)
        assert broker.llen("items") == 0  # the intake publishes nothing; the dispatcher does

        # The real dispatcher, run here against the same broker, for a fleet of one 4-thread worker.
        store = redis.Redis.from_url(redis_server.url, decode_responses=True)
        LeaseKeeper(store, worker="w1", slots=4, lease_seconds=20).renew_once()
        celery = create_celery(settings)
        dispatcher = Dispatcher(store, settings, settings.tenants(), publish=lambda d: publish(celery, d),
                                end_lapsed=print, end_job=print, worker="w1")
        assert dispatcher.lead()
        dispatcher.slow_round()
        assert dispatcher.tick()
        item_raws = broker.lrange("items", 0, -1)

        assert sorted(_decoded(raw)[0] for raw in item_raws) == [[job_id, 0], [job_id, 1]]  # item 2 waits for 0
        assert all(set(_decoded(raw)[1]) == {"tenant", "lease"} for raw in item_raws)
        assert all(_decoded(raw)[1]["tenant"] == "north" for raw in item_raws)
        for raw in item_raws:
            # Headers and properties, and the body decoded: base64 text may hold "Q1" by chance.
            envelope = json.loads(raw)
            readable = json.dumps({**envelope, "body": None}).encode() + base64.b64decode(envelope["body"])
            for secret in (b"token-north-secret", b"password-north-secret", b"webhook-north-secret", b"north.till",
                           b"Q1", b"Q2"):
                assert secret not in readable
    finally:
        redis_server.stop()


def test_an_oauth_token_expiring_mid_job_is_renewed_once_and_no_item_fails(tmp_path, sim):
    sim.configure(oauthKey="key-mid", oauthSecret="secret-mid", tokenTtlSeconds=3600, latencyMs=30)
    redis_server = RedisServer(tmp_path).start()
    settings = make_settings(redis_server.url, sim.url, capillary_till="", capillary_password="",
                             capillary_oauth_key="key-mid", capillary_oauth_secret="secret-mid", worker_concurrency=8)
    worker = Worker(settings, tmp_path / "worker.log")
    api = ApiClient(create_app(settings))
    try:
        tag = uuid.uuid4().hex[:8]
        job_id = api.submit([_c(f"OA-{tag}-{i}") for i in range(300)]).get_json()["jobId"]
        wait_for(lambda: api.get(f"/jobs/{job_id}").get_json()["processedCount"] >= 50, timeout=60,
                 what="50 items done")
        sim.admin("POST", "expire-tokens")  # every thread's next call is refused with 401

        job = api.wait(job_id, timeout=120)

        assert (job["processedCount"], job["failureCount"], job["createdCount"]) == (300, 0, 300)
        calls = sim.calls()["byEndpoint"]
        assert calls["token"] == {"200": 2}  # one at start, one renewal shared by all eight threads
        refused = sum(calls[endpoint].get("401", 0) for endpoint in ("lookup", "add", "get"))
        assert refused >= 1  # the expiry really hit mid-job
    finally:
        worker.stop()
        redis_server.stop()


def test_a_tenants_file_with_a_mistake_is_refused_with_the_reason(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text('[tenants.a]\ntoken = "x"\nrate_limits = "add=fast"\n')

    with pytest.raises(ValueError, match="add"):
        Settings(tenants_file=str(bad)).tenants()


# -- callbacks --------------------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(Receiver.answers.pop(0) if Receiver.answers else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_callback_is_signed_retried_and_only_sent_to_allowed_hosts(tmp_path, simulator):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.answers, Receiver.received = [503], []
    redis_server = RedisServer(tmp_path).start()
    settings = make_settings(redis_server.url, simulator.url, upsert_webhook_secret="whsec-test",
                             upsert_callback_hosts=("127.0.0.1",))
    worker = Worker(settings, tmp_path / "worker.log")
    api = ApiClient(create_app(settings))
    try:
        simulator.reset()
        url = f"http://127.0.0.1:{server.server_port}/hook?x=1"
        refused = api.submit(GOOD, callbackUrl="http://localhost:1/internal")
        job_id = api.submit(GOOD, callbackUrl=url).get_json()["jobId"]

        wait_for(lambda: len(Receiver.received) >= 2, timeout=60, what="the callback, retried once")
        headers, body = Receiver.received[-1]
        expected = "sha256=" + hmac.new(b"whsec-test", body, hashlib.sha256).hexdigest()
        assert headers["X-Upsert-Signature"] == expected
        document = json.loads(body)
        assert (document["jobId"], document["state"], document["totalCount"]) == (job_id, "COMPLETED", 1)
        assert refused.status_code == 400 and "not one of" in refused.get_json()["errors"][0]["message"]
    finally:
        server.shutdown()
        worker.stop()
        redis_server.stop()


def test_a_callback_failing_across_a_worker_restart_is_delivered_once_the_receiver_recovers(tmp_path, simulator):
    """Callbacks at least once, durably: the attempts are due in Redis, not in a worker's countdown, so a
    worker killed while the receiver answers 500 loses nothing; every attempt carries the same body,
    signature and Idempotency-Key."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.answers, Receiver.received = [500] * 1000, []
    redis_server = RedisServer(tmp_path).start()
    settings = make_settings(redis_server.url, simulator.url, upsert_webhook_secret="whsec-test",
                             upsert_callback_hosts=("127.0.0.1",))
    workers = [Worker(settings, tmp_path / "worker-0.log")]
    api = ApiClient(create_app(settings))
    try:
        simulator.reset()
        job_id = api.submit(GOOD, callbackUrl=f"http://127.0.0.1:{server.server_port}/hook").get_json()["jobId"]
        wait_for(lambda: len(Receiver.received) >= 2, timeout=60, what="two failed attempts")
        workers[0].kill()
        Receiver.answers = []  # from now on the receiver accepts
        failed = len(Receiver.received)
        workers.append(Worker(settings, tmp_path / "worker-1.log"))

        # An attempt under way when the worker died holds its due entry for CALLBACK_HOLD_SECONDS: on a busy
        # machine the kill can land while the third attempt is out, and that one is tried again only then.
        wait_for(lambda: len(Receiver.received) > failed, timeout=CALLBACK_HOLD_SECONDS + 60,
                 what="the callback after the restart")
        assert len({body for _headers, body in Receiver.received}) == 1
        assert {h["X-Upsert-Signature"] for h, _body in Receiver.received} == {
            "sha256=" + hmac.new(b"whsec-test", Receiver.received[0][1], hashlib.sha256).hexdigest()}
        assert {h["Idempotency-Key"] for h, _body in Receiver.received} == {job_id}
        assert json.loads(Receiver.received[-1][1])["state"] == "COMPLETED"
        store = redis.Redis.from_url(redis_server.url, decode_responses=True)
        wait_for(lambda: store.zcard("cu:callbacks") == 0, timeout=10, what="the callback to be no longer due")
        assert store.hget(keys.job(job_id), "cb.outcome") == "delivered"
    finally:
        server.shutdown()
        for worker in workers:
            worker.stop()
        redis_server.stop()


# -- logs -----------------------------------------------------------------------------------------


def test_a_whole_jobs_log_has_no_raw_mobile_email_or_token(tmp_path, simulator):
    redis_server = RedisServer(tmp_path).start()
    settings = make_settings(redis_server.url, simulator.url)
    worker = Worker(settings, tmp_path / "worker.log")
    api = ApiClient(create_app(settings))
    mobile, email = "919876543210", "private.person@example.com"
    try:
        simulator.reset(errorRate=0.3, seed=3)
        job = api.run([{"profiles": [{"identifiers": [{"type": "mobile", "value": mobile},
                                                       {"type": "email", "value": email}],
                                      "source": "INSTORE"}]},
                       {"profiles": [{"identifiers": [{"type": "email", "value": "bad@" + email}],
                                      "source": "INSTORE"}]}])
        assert job["totalCount"] == 2
    finally:
        worker.stop()
        redis_server.stop()
    log = worker.log_path.read_text()
    json_lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    item_lines = [line for line in json_lines if line["message"].startswith("item ")]
    assert len(item_lines) == 2 and all(line["jobId"] == job["jobId"] for line in item_lines)
    assert {line["index"] for line in item_lines} == {0, 1}
    assert "91********10" in log  # the mobile is there, masked: the test can see it
    for secret in (mobile, email, TOKEN, settings.capillary_password):
        assert secret not in log
    assert not re.search(r"\b\d{10,15}\b", log)
