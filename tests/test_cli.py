"""The installed `customer-upsert` command, run as a person runs it: a subprocess against the real API
(gunicorn from the Procfile) and the session's Celery worker; exit codes and what it prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from cli import procfile
from tests.helpers import JOBS, TOKEN, free_port, wait_for
from tests.web_process import web_url_fixture  # noqa: F401  (the web_url fixture)

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "customer-upsert")
SEED = ROOT / "examples" / "seed-batch.json"
JOB_ID = r"[0-9a-f]{32}"


def run(*args: str, url: str, timeout: float = 120, program: str = CLI) -> subprocess.CompletedProcess:
    env = procfile.process_env({"UPSERT_URL": url, "UPSERT_API_TOKEN": TOKEN})
    return subprocess.run([program, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def get_job(url: str, job_id: str) -> dict:
    return requests.get(f"{url}{JOBS}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()


def ndjson(path: Path, n: int, *, tag: str | None = None) -> Path:
    tag = tag or str(uuid.uuid4().int)[:3]
    path.write_text("".join(json.dumps({"profiles": [{
        "firstName": f"N{i}", "identifiers": [{"type": "mobile", "value": f"9195{tag}{i:05d}"}], "source": "INSTORE",
    }]}) + "\n" for i in range(n)))
    return path


def test_submit_wait_prints_the_full_id_first_then_a_summary_and_exits_by_the_outcome(web_url, worker, sim, tmp_path):
    seed = run("submit", str(SEED), "--wait", url=web_url)
    first_line = seed.stdout.splitlines()[0]
    job_id = re.match(rf"job ({JOB_ID}) accepted: 2 customers", first_line).group(1)
    good = run("submit", str(ndjson(tmp_path / "good.ndjson", 3)), "--wait", url=web_url)

    assert seed.returncode == 1, seed.stdout + seed.stderr  # 1: an item failed
    assert f"job {job_id} COMPLETED: total 2, created 1, updated 0, failed 1, cancelled 0; took " in seed.stdout
    # the failures, one copy-paste away
    assert (f"customer-upsert results {job_id} --failed -o {job_id}-failed.ndjson && "
            f"customer-upsert submit {job_id}-failed.ndjson") in seed.stdout
    assert re.search(r"COMPLETED failed 1 .* 2/2 [\d,]+ items/s done", seed.stdout), seed.stdout  # the bar's end
    assert good.returncode == 0, good.stdout + good.stderr
    assert re.search(rf"job {JOB_ID} COMPLETED: total 3, created 3, updated 0, failed 0, cancelled 0", good.stdout)

    # status, jobs, the failed export resubmitted, and a cancel that finds the job finished
    status = json.loads(run("status", job_id, url=web_url).stdout)
    listed = run("jobs", "--limit", "5", url=web_url)
    exported = run("results", job_id, "--failed", "-o", str(tmp_path / "failed.ndjson"), url=web_url)
    resubmitted = run("submit", str(tmp_path / "failed.ndjson"), url=web_url)
    cancel = run("cancel", job_id, url=web_url)

    assert (status["state"], status["failureCount"]) == ("COMPLETED", 1)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert listed.returncode == 0 and listed.stdout.startswith("JOB ")
    assert row.split()[1:5] == ["COMPLETED", "2/2", "1", "0"] and row.endswith("  seed-batch.json")  # its label
    assert exported.returncode == 0 and "wrote 1 items" in exported.stderr
    assert resubmitted.returncode == 0 and json.loads(resubmitted.stdout)["totalCount"] == 1
    assert re.search(rf"job ({JOB_ID}) accepted: 1 customers", resubmitted.stderr)
    assert cancel.returncode == 0
    assert cancel.stdout.splitlines()[0] == f"job {job_id} had already finished (COMPLETED); nothing was cancelled"


def test_submit_dry_run_says_what_it_would_do_and_run_applies_it(web_url, worker, sim, tmp_path):
    path = ndjson(tmp_path / "plan.ndjson", 3)

    dry = run("submit", str(path), "--dry-run", "--wait", url=web_url)
    job_id = re.match(rf"dry run ({JOB_ID}) accepted: 3 customers", dry.stdout).group(1)
    applied = run("run", job_id, "--wait", url=web_url)
    again = run("run", "0" * 32, url=web_url)

    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert (f"dry run {job_id} COMPLETED: total 3, would create 3, would update 0, would fail 0, cancelled 0; "
            "nothing was written") in dry.stdout
    assert f"customer-upsert run {job_id} --wait" in dry.stdout
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert re.search(rf"job {JOB_ID} COMPLETED: total 3, created 3, updated 0, failed 0", applied.stdout)
    assert again.returncode == 2 and "HTTP 404" in again.stderr


def test_ctrl_c_leaves_the_job_running_and_says_how_to_follow_or_cancel_it(web_url, worker, sim, tmp_path):
    sim.configure(latencyMs=50)  # 600 customers: several seconds on the session's worker
    process = subprocess.Popen(
        [CLI, "submit", str(ndjson(tmp_path / "slow.ndjson", 600)), "--wait"], cwd=ROOT,
        # FORCE_COLOR: rich draws the live bar as on a terminal, so what it shows while the job runs can be read
        env=procfile.process_env({"UPSERT_URL": web_url, "UPSERT_API_TOKEN": TOKEN, "FORCE_COLOR": "1"}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # As at a terminal: a suite started in the background (CI, `make test &`) passes SIGINT on ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    out = bytearray()
    reader = threading.Thread(target=_drain, args=(process, out), daemon=True)
    reader.start()

    def shown() -> str:
        return ANSI.sub("", out.decode("utf-8", "replace"))

    try:
        accepted = wait_for(lambda: re.match(rf"job ({JOB_ID}) accepted: 600 customers", shown()), timeout=30,
                            what="the job id line")
        job_id = accepted.group(1)
        bar = wait_for(lambda: re.search(r"RUNNING .*? \d+/600 [\d,]+ items/s ETA \d+:\d\d", shown()), timeout=30,
                       what="the bar to show the rate and the ETA").group(0)
        process.send_signal(signal.SIGINT)
        process.wait(15)
        reader.join(5)
        stderr = process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
    running = get_job(web_url, job_id)
    cancel = run("cancel", job_id, url=web_url)
    again = run("cancel", job_id, url=web_url)

    assert process.returncode == 130, bar
    assert f"job {job_id} keeps running" in stderr
    assert f"customer-upsert watch {job_id}" in stderr and f"customer-upsert cancel {job_id}" in stderr
    assert "Traceback" not in stderr
    assert running["state"] == "RUNNING" and not running["finishedAt"]
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.splitlines()[0] == f"job {job_id} cancelled: items not yet started end CANCELLED"
    summary = re.search(r"CANCELLED: total 600, created (\d+), updated 0, failed 0, cancelled (\d+)", cancel.stdout)
    assert summary and int(summary.group(2)) > 0, cancel.stdout
    assert again.stdout.startswith(f"job {job_id} had already finished (CANCELLED); nothing was cancelled")


def test_watch_reattaches_to_a_job_submitted_without_waiting_and_results_into_head_ends_quietly(
        web_url, worker, sim, tmp_path):
    sim.configure(latencyMs=50)  # 400 customers: a few seconds on the session's worker
    path = ndjson(tmp_path / "later.ndjson", 399)
    with path.open("a") as handle:  # one without a source: it fails validation
        handle.write(json.dumps({"profiles": [{"identifiers": [{"type": "mobile", "value": "919500000001"}]}]}) + "\n")
    submitted = run("submit", str(path), url=web_url)
    job_id = json.loads(submitted.stdout)["jobId"]

    env = procfile.process_env({"UPSERT_URL": web_url, "UPSERT_API_TOKEN": TOKEN, "FORCE_COLOR": "1"})
    watched = subprocess.run([CLI, "watch", job_id], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    shown = ANSI.sub("", watched.stdout)
    head = subprocess.run(["bash", "-c", f"set -o pipefail; {CLI} results {job_id} | head -1"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    listed = run("jobs", url=web_url)

    assert f"customer-upsert watch {job_id}" in submitted.stderr  # the hint names the command
    assert re.search(r"RUNNING .*? \d+/400 [\d,]+ items/s ETA", shown), shown  # the bar, live
    assert re.search(rf"job {job_id} COMPLETED: total 400, created 399, updated 0, failed 1, cancelled 0; "
                     r"took [\d.:]+( s)?, [\d,]+ items/s$", shown, re.M), shown
    assert f"customer-upsert results {job_id} --failed -o {job_id}-failed.ndjson" in shown
    assert watched.returncode == 1  # an item failed
    assert head.returncode == 0, head.stderr
    assert head.stderr == "" and json.loads(head.stdout)["index"] == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert row.endswith("  later.ndjson")


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _drain(process: subprocess.Popen, out: bytearray) -> None:
    """Keep what the process writes to stdout in ``out``, as it comes."""
    while chunk := os.read(process.stdout.fileno(), 4096):
        out.extend(chunk)


def _file(name: str, content: str | bytes, mode: int = 0o644):
    def make(folder: Path) -> Path:
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        path.chmod(mode)
        return path

    return make


FILE_PROBLEMS = {
    "missing": (lambda folder: folder / "nowhere.json", "no such file"),
    "directory": (lambda folder: folder, "is a directory, not a file of customers"),
    "unreadable": (_file("locked.json", "[]", mode=0), "cannot read it (permission denied)"),
    "binary": (_file("x.bin", b"\x7fELF\x02\x01\x00\x00" * 64), "is a binary file, not JSON or NDJSON"),
    "not JSON": (_file("x.json", '[{"profiles": ]'), "not valid JSON at line 1, column 15"),
    "a bad NDJSON line": (_file("x.ndjson", "{}\n{}\n{oops\n"), "line 3 is not JSON"),
    "a JSON object": (_file("one.json", '{\n  "profiles": []\n}\n'),
                      "holds one JSON object; the API takes a JSON array"),
    "a one-line JSON object": (_file("one.json", '{"profiles": []}'), "holds one JSON object"),
    "empty": (_file("e.json", "\n"), "is empty"),
}


@pytest.mark.parametrize("problem", FILE_PROBLEMS)
def test_a_file_problem_is_one_clear_line_and_exit_2(problem, tmp_path):
    make, expected = FILE_PROBLEMS[problem]
    path = make(tmp_path)
    program, prefix = CLI, []
    if problem == "unreadable" and os.geteuid() == 0:
        # Root reads any file; without the capabilities that let it, root too is held to the file's mode.
        if not shutil.which("setpriv"):
            pytest.skip("root, and no setpriv (util-linux) to drop the capability to read any file")
        program, prefix = "setpriv", ["--bounding-set=-dac_override,-dac_read_search", CLI]
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: the file is judged before any request

    result = run(*prefix, "submit", str(path), url=closed, timeout=30, program=program)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"customer-upsert: {path}"), result.stderr
    assert expected in result.stderr


def test_a_connection_problem_is_one_line_and_exit_2_and_help_lists_the_exit_codes():
    closed = run("jobs", url=f"http://127.0.0.1:{free_port()}", timeout=30)
    helps = [run(*args, url="http://127.0.0.1:1", timeout=30).stdout for args in (["--help"], ["submit", "--help"])]

    assert closed.returncode == 2 and closed.stderr.count("\n") == 1 and "connection refused" in closed.stderr
    for text in helps:
        assert "exit codes:" in text
        for code in ("0 ", "1 ", "2 ", "130 "):
            assert re.search(rf"^\s+{code}", text, re.M), (code, text)


class RecordingApi:
    """A stand-in for the bulk route that records what the command line sends."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        app = Flask(__name__)

        @app.post(f"{JOBS}/bulk")
        def bulk():
            body = request.stream.read()
            self.requests.append({"headers": dict(request.headers), "body": body, "query": dict(request.args)})
            return jsonify({"jobId": "0" * 32, "state": "QUEUED", "totalCount": body.count(b"\n")}), 202

        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingApi:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


def test_an_ndjson_file_is_streamed_as_ndjson_and_export_lines_become_their_input(tmp_path):
    path = ndjson(tmp_path / "big.ndjson", 3000)  # about 300 KB: several chunks
    export = tmp_path / "failed.ndjson"
    inputs = [json.loads(line) for line in path.read_text().splitlines()[:2]]
    export.write_text("".join(json.dumps({"index": i, "action": "FAILED", "errors": [], "input": element}) + "\n"
                              for i, element in enumerate(inputs)))

    with RecordingApi() as api:  # a hung stream ends in run's timeout, not in a timing assert
        big = run("submit", str(path), url=api.url, timeout=60)
        exported = run("submit", str(export), url=api.url, timeout=60)
    sent, resent = api.requests

    assert big.returncode == exported.returncode == 0, big.stderr + exported.stderr
    assert sent["headers"]["Content-Type"] == "application/x-ndjson"
    assert sent["headers"].get("Transfer-Encoding") == "chunked"  # streamed from the file, not built whole
    assert sent["body"] == path.read_bytes()
    assert [json.loads(line) for line in resent["body"].splitlines()] == inputs


def test_a_csv_file_is_sent_as_csv_by_its_extension_or_its_header(tmp_path):
    rows = "".join(f"F{i},9195{i:08d},INSTORE\r\n" for i in range(5000))  # about 120 KB: several chunks
    named = tmp_path / "export.csv"
    named.write_bytes(("\ufefffirstName,identifiers.mobile,source\r\n" + rows).encode())
    unnamed = tmp_path / "export.txt"
    unnamed.write_bytes(("firstName,identifiers.mobile,source\n" + rows).encode())

    with RecordingApi() as api:
        by_extension = run("submit", str(named), "--dry-run", url=api.url, timeout=60)
        by_content = run("submit", str(unnamed), url=api.url, timeout=60)
    sent, resent = api.requests

    assert by_extension.returncode == by_content.returncode == 0, by_extension.stderr + by_content.stderr
    assert sent["headers"]["Content-Type"] == resent["headers"]["Content-Type"] == "text/csv"
    assert sent["headers"].get("Transfer-Encoding") == "chunked"
    assert sent["body"] == named.read_bytes() and resent["body"] == unnamed.read_bytes()
    assert sent["query"] == {"skipChangeIdentifier": "false", "dryRun": "true", "label": "export.csv"}
