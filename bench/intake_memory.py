"""Memory the intake holds while it accepts one large submission: a JSON array against NDJSON.

Both bodies carry the same customers. The JSON array must be parsed whole before anything is
stored; NDJSON is read, checked and written to Redis a line at a time. Peak memory is traced with
tracemalloc (allocations made while the request is handled, the body's own file excluded) and
printed against the body's size, so the figures do not depend on the machine.

    .venv/bin/python bench/intake_memory.py [--items 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import create_app
from tests.helpers import JOBS, TOKEN, RedisServer, make_settings, ndjson_file


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
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


if __name__ == "__main__":
    main()
