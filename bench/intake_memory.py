"""Memory the intake holds while it accepts one large submission: a JSON array against NDJSON, then a
1 M-row CSV against the same customers as NDJSON, through the real web process.

Both bodies carry the same customers. The JSON array must be parsed whole before anything is
stored; NDJSON is read, checked and written to Redis a line at a time. Peak memory is traced with
tracemalloc (allocations made while the request is handled, the body's own file excluded) and
printed against the body's size, so the figures do not depend on the machine.

The second part (``--rows``, 0 skips it) starts the Procfile's ``web`` line (gunicorn) on a Redis of
its own, streams a CSV of ``--rows`` customers to it over HTTP, and prints how long it took to be
accepted (the 202) and the peak resident memory of the gunicorn worker that handled it (VmHWM, reset
before each request); then the same for the same customers as NDJSON, the baseline, and the ratios.

    .venv/bin/python bench/intake_memory.py [--items 20000] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
import requests

from api.app import create_app
from cli import procfile
from tests.helpers import JOBS, TOKEN, RedisServer, free_port, make_settings, ndjson_file, settings_env, wait_for
from tests.web_process import WebMemory

CSV_HEADER = ("firstName,lastName,source,accountId,identifiers.externalId,identifiers.mobile,identifiers.email,"
              "customFields.city,customFields.tier,extendedFields.gender\r\n")


def as_json_array(ndjson: Path, target: Path) -> Path:
    lines = [line for line in ndjson.read_text().splitlines() if line]
    target.write_text("[" + ",".join(lines) + "]")
    return target


def measure(app, path: Path, content_type: str) -> tuple[float, float]:
    """Peak traced bytes and seconds for one submission streamed from ``path``."""
    with path.open("rb") as stream:
        tracemalloc.start()
        start = time.perf_counter()
        response = app.test_client().post(
            f"{JOBS}/bulk", input_stream=stream, content_length=path.stat().st_size, content_type=content_type,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert response.status_code == 202, response.get_json()
    return peak, seconds


def csv_file(path: Path, count: int) -> Path:
    """The customers of :func:`tests.helpers.ndjson_file` as CSV rows, CRLF, with a BOM."""
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        out.write(CSV_HEADER)
        for i in range(count):
            out.write(f"First{i},Last,WEB_ENGAGE,acc1,X-{i},9180{i:08d},u{i}@example.com,Bangalore,gold,Female\r\n")
    return path


def web_process(folder: Path, rows: int) -> None:
    """Accept time and the web worker's peak memory for ``rows`` customers as CSV and as NDJSON."""
    server = RedisServer(folder).start()
    port = free_port()
    settings = make_settings(server.url, "http://127.0.0.1:9")
    env = settings_env(settings) | {
        "PORT": str(port), "MAX_ITEMS_PER_JOB": str(rows), "MAX_BODY_BYTES": str(4 << 30),
        "TENANT_MAX_PENDING_ITEMS": "0", "TENANT_MAX_ITEMS_PER_DAY": "0"}
    csv_path, ndjson_path = csv_file(folder / "rows.csv", rows), ndjson_file(folder / "rows.ndjson", rows)
    with (folder / "web.log").open("wb") as log:
        web = procfile.start("web", env, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: requests.get(url + "/readyz", timeout=1).ok, timeout=60, what="gunicorn")
            memory = WebMemory(web.pid)
            idle = memory.peak()
            print(f"\n{rows:,} customers through the web process (gunicorn, the Procfile's web line); idle worker "
                  f"{idle / 1e6:.0f} MB resident:")
            measured = {}
            for name, path, content_type in (("NDJSON", ndjson_path, "application/x-ndjson"),
                                             ("CSV", csv_path, "text/csv")):
                redis.Redis.from_url(server.url).flushall()
                memory.mark()  # VmHWM from now on: this request's peak, not an earlier one's
                with path.open("rb") as body:
                    start = time.perf_counter()
                    response = requests.post(f"{url}{JOBS}/bulk", data=body, timeout=900, headers={
                        "Authorization": f"Bearer {TOKEN}", "Content-Type": content_type,
                        "Content-Length": str(path.stat().st_size)})
                    seconds = time.perf_counter() - start
                assert response.status_code == 202, response.text[:500]
                assert response.json()["totalCount"] == rows
                peak = memory.peak()
                measured[name] = (seconds, peak)
                print(f"  {name:<7} {path.stat().st_size / 1e6:6.0f} MB accepted in {seconds:6.1f} s "
                      f"({rows / seconds:,.0f} rows/s); web worker peak {peak / 1e6:5.0f} MB resident")
            (ndjson_s, ndjson_peak), (csv_s, csv_peak) = measured["NDJSON"], measured["CSV"]
            print(f"  CSV / NDJSON: time {csv_s / ndjson_s:.2f} x; peak memory above the idle worker's "
                  f"{(csv_peak - idle) / 1e6:.0f} MB / {(ndjson_peak - idle) / 1e6:.0f} MB = "
                  f"{(csv_peak - idle) / max(ndjson_peak - idle, 1):.2f} x")
        finally:
            procfile.stop(web)
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="customers for the web process's CSV and NDJSON runs (0: skip them)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_server = RedisServer(folder).start()
        try:
            app = create_app(make_settings(redis_server.url, "http://127.0.0.1:9"))
            ndjson = ndjson_file(folder / "batch.ndjson", args.items)
            array = as_json_array(ndjson, folder / "batch.json")
            size = ndjson.stat().st_size
            print(f"{args.items:,} customers, {size / 1e6:.1f} MB as NDJSON ({array.stat().st_size / 1e6:.1f} MB "
                  "as a JSON array); peak memory traced while the request is handled (tracemalloc slows both):")
            for name, path, content_type in (("JSON array", array, "application/json"),
                                             ("NDJSON", ndjson, "application/x-ndjson")):
                peak, seconds = measure(app, path, content_type)
                print(f"  {name:<11} peak {peak / 1e6:7.1f} MB = {peak / size:5.2f} x the body   ({seconds:.1f} s)")
        finally:
            redis_server.stop()
        if args.rows:
            web_process(folder, args.rows)


if __name__ == "__main__":
    main()
