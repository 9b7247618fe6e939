"""A million-line NDJSON upload through the web process the Procfile starts: accepted, with the web
worker's memory bounded (it streams) and the job store holding less than the payload (inputs packed).

Slow (about 45 s on the 2-core machine: the file is written, then sent over HTTP), and
kept in the suite rather than in bench/: it is the one check that the intake streams at the size the
README promises. Its timings are bench/million.py's to print, not this test's to assert.
"""

from __future__ import annotations

import redis
import requests

from tests.helpers import JOBS, TOKEN, RedisServer, make_settings, ndjson_file
from tests.web_process import big_job_limits, web_process

LINES = 1_000_000


def test_a_million_line_ndjson_upload_is_accepted_in_bounded_memory(tmp_path):
    path = ndjson_file(tmp_path / "million.ndjson", LINES)
    payload = path.stat().st_size
    server = RedisServer(tmp_path).start()
    store = redis.Redis.from_url(server.url)
    try:
        settings = make_settings(server.url, "http://127.0.0.1:9")
        with web_process(tmp_path, settings, **big_job_limits(LINES, payload)) as (url, memory):
            idle = memory.peak()
            before = int(store.info("memory")["used_memory"])
            memory.mark()

            with path.open("rb") as body:
                response = requests.post(f"{url}{JOBS}/bulk", data=body, timeout=600, headers={
                    "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson",
                    "Content-Length": str(payload)})

            assert response.status_code == 202, response.text[:500]
            assert response.json()["totalCount"] == LINES
            held = memory.peak() - idle
            stored = int(store.info("memory")["used_memory"]) - before
    finally:
        server.stop()

    assert held < 100 << 20, f"the web worker grew {held >> 20} MB for a {payload >> 20} MB body"
    assert stored < payload / 2, f"the job store holds {stored >> 20} MB for a {payload >> 20} MB payload"
