"""The pages for people, in a real browser: the system's headless Chromium driven by Playwright.

Every request a page makes is seen by a route handler: anything not for 127.0.0.1 is refused and
fails the test, so "served without any CDN" is checked, not assumed. Screenshots are written to
artifacts/pages/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import JOBS, TOKEN, wait_for
from tests.web_process import web_url_fixture  # noqa: F401  (the web_url fixture)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "pages"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: What a headless Chromium needs here: no sandbox (root), and none of its own calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps"]
TOKEN_KEY = "customer-upsert.token"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh profile directory of its own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A fresh browser context and page, with every request the page makes on record."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
        self.requests: list[tuple[str, str, dict]] = []  # method, url, headers
        self.refused: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _route(self, route) -> None:
        request = route.request
        self.requests.append((request.method, request.url, request.headers))
        if urlsplit(request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.refused.append(request.url)
            route.abort()

    def screenshot(self, name: str) -> Path:
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_stayed_on_this_machine(self) -> None:
        assert self.requests, "the page made no request at all"
        assert self.refused == [], f"requests that would have left the machine: {self.refused}"
        assert self.errors == [], f"errors in the page's scripts: {self.errors}"


@pytest.fixture
def page(browser) -> Iterator[Page]:
    p = Page(browser)
    yield p
    p.context.close()


def test_docs_renders_every_operation_of_openapi_json_and_executes_one_with_the_bearer_token(page, web_url):
    document = requests.get(f"{web_url}/openapi.json", timeout=5).json()
    operations = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}

    page.page.goto(f"{web_url}/docs")
    page.page.wait_for_selector(".opblock", timeout=15_000)
    rendered = set(map(tuple, page.page.eval_on_selector_all(".opblock", """blocks => blocks.map(b => [
        b.querySelector('.opblock-summary-method').textContent.trim(),
        b.querySelector('.opblock-summary-path').dataset.path])""")))
    page.screenshot("docs.png")

    # Authorize once with the bearer token, then run "GET /jobs" (try-it-out is on from the start).
    page.page.click("button.authorize")
    page.page.fill(".auth-container input", TOKEN)
    page.page.click(".auth-btn-wrapper button.authorize")
    page.page.click("button.btn-done")
    jobs = page.page.locator(".opblock-get", has=page.page.locator(f'[data-path="{JOBS}/jobs"]'))
    jobs.locator(".opblock-summary").click()
    jobs.locator("button.execute").click()
    jobs.locator(".live-responses-table tr.response .response-col_status").first.wait_for(timeout=10_000)
    status = jobs.locator(".live-responses-table tr.response .response-col_status").first.inner_text().strip()
    page.screenshot("docs-executed.png")

    assert rendered == operations
    assert status == "200"
    calls = [(url, headers) for method, url, headers in page.requests if urlsplit(url).path == f"{JOBS}/jobs"]
    assert calls and all(headers.get("authorization") == f"Bearer {TOKEN}" for _, headers in calls)
    assert all(TOKEN not in url for _, url, _ in page.requests)
    page.assert_stayed_on_this_machine()


def customers(n: int, tag: str, *, without_source: int = 0) -> list[dict]:
    """``n`` new customers; the first ``without_source`` of them lack a source and fail validation."""
    elements = []
    for i in range(n):
        profile = {"firstName": f"{tag}{i}", "identifiers": [{"type": "mobile", "value": f"9197{tag}{i:05d}"}]}
        if i >= without_source:
            profile["source"] = "INSTORE"
        elements.append({"profiles": [profile]})
    return elements


def submit(web_url: str, elements: list[dict]) -> str:
    response = requests.post(f"{web_url}{JOBS}/bulk", json=elements, timeout=30,
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202, response.text
    return response.json()["jobId"]


def log_in(page: Page, web_url: str, token: str) -> None:
    page.page.goto(f"{web_url}/ui/")
    page.page.fill("#token", token)
    page.page.click("#login button[type=submit]")


def test_dashboard_shows_a_running_job_moving_then_its_counts_and_the_failed_items(page, web_url, sim, worker):
    sim.configure(latencyMs=50)  # about 5 s for 400 customers on the session's worker
    tag = uuid.uuid4().hex[:3].translate(str.maketrans("abcdef", "123456"))
    job_id = submit(web_url, customers(400, tag, without_source=3))

    # A wrong token is refused and asked for again; the right one shows the jobs.
    log_in(page, web_url, "not-the-token")
    page.page.wait_for_selector("#login-error:not([hidden])", timeout=10_000)
    refused = page.page.inner_text("#login-error")
    page.screenshot("ui-token.png")
    log_in(page, web_url, TOKEN)
    row = page.page.locator(f'li[data-job="{job_id}"]')
    row.wait_for(timeout=10_000)

    def bar() -> int:
        return int(row.locator(".bar").get_attribute("aria-valuenow") or 0)

    seen_running: set[int] = set()

    def moved_twice() -> bool:
        value = bar()
        if 0 < value < 400:
            seen_running.add(value)
        return len(seen_running) >= 2

    wait_for(moved_twice, timeout=30, what="the progress bar to move while the job runs", interval=0.2)
    running_text = row.inner_text()
    cancellable = row.locator("button.cancel").is_visible()
    page.screenshot("ui-running.png")
    wait_for(lambda: row.get_attribute("data-state") == "COMPLETED", timeout=60, what="the job to complete",
             interval=0.2)
    done_text = row.inner_text()
    page.screenshot("ui-done.png")

    with page.page.expect_download() as download:
        row.locator("button.download").click()
    saved = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]

    assert "refused" in refused
    assert "ETA" in running_text and "items/s" in running_text and cancellable
    assert row.locator("button.cancel").is_hidden()  # once finished
    assert "400 / 400 processed (100%)" in done_text
    assert "created 397" in done_text and "failed 3" in done_text and "cancelled 0" in done_text
    assert download.value.suggested_filename == f"{job_id}-failed.ndjson"
    assert [item["index"] for item in saved] == [0, 1, 2]
    assert all(item["input"]["profiles"][0]["firstName"] == f"{tag}{item['index']}" for item in saved)
    # The token lives in this tab's sessionStorage and in Authorization headers, never in a URL.
    assert page.page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == TOKEN
    assert all(TOKEN not in url for _, url, _ in page.requests)
    page.assert_stayed_on_this_machine()


def test_dashboard_cancels_a_running_job(page, web_url, sim, worker):
    sim.configure(latencyMs=50)
    tag = uuid.uuid4().hex[:3].translate(str.maketrans("abcdef", "123456"))
    job_id = submit(web_url, customers(400, tag))
    log_in(page, web_url, TOKEN)
    row = page.page.locator(f'li[data-job="{job_id}"]')
    row.wait_for(timeout=10_000)
    wait_for(lambda: int(row.locator(".bar").get_attribute("aria-valuenow") or 0) > 0, timeout=30,
             what="the job to start", interval=0.1)

    page.page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.cancel").click()
    wait_for(lambda: row.get_attribute("data-state") == "CANCELLED" and "took" in row.inner_text(), timeout=30,
             what="the job to end cancelled", interval=0.2)
    text = row.inner_text()
    page.screenshot("ui-cancelled.png")
    job = requests.get(f"{web_url}{JOBS}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=5).json()

    assert job["state"] == "CANCELLED" and job["cancelledCount"] > 0
    assert f"cancelled {job['cancelledCount']}" in text
    assert "ETA" not in text  # an ended or cancelled job has no completion to estimate
    assert row.locator("button.cancel").is_hidden()
    page.assert_stayed_on_this_machine()


HOSTILE_NAME = '<img src=x onerror="window.pwned=1">'
HOSTILE_MOBILE = "<script>window.pwned=2</script>"


def test_dashboard_shows_a_jobs_failures_as_text_filters_them_by_code_and_retries_them(page, web_url, sim, worker):
    tag = uuid.uuid4().hex[:3].translate(str.maketrans("abcdef", "123456"))
    elements = customers(6, tag, without_source=2)  # #0 and #1: no source, 8004
    elements[0]["profiles"][0]["firstName"] = HOSTILE_NAME
    elements[5]["profiles"][0]["identifiers"][0]["value"] = HOSTILE_MOBILE  # #5: not a mobile number
    label = '<b>march</b> "customers".ndjson'
    response = requests.post(f"{web_url}{JOBS}/bulk", json=elements, params={"label": label}, timeout=30,
                             headers={"Authorization": f"Bearer {TOKEN}"})
    job_id = response.json()["jobId"]
    log_in(page, web_url, TOKEN)
    row = page.page.locator(f'li[data-job="{job_id}"]')
    row.wait_for(timeout=10_000)
    wait_for(lambda: row.get_attribute("data-state") == "COMPLETED", timeout=60, what="the job to complete",
             interval=0.2)
    table = row.locator(".failed-items tbody tr")
    wait_for(lambda: table.count() == 3, timeout=15, what="the failed items' table", interval=0.2)
    page.page.locator("#tenant .quotas li").first.wait_for(timeout=10_000)
    page.screenshot("ui-failures.png")
    cells = [[td.inner_text() for td in tr.locator("td").all()] for tr in table.all()]
    codes = {cell[2] for cell in cells}
    invalid_mobile = next(cell[2] for cell in cells if cell[0] == "#5")

    row.locator(".code-filter").select_option(invalid_mobile)
    shown = [tr.locator("td").first.inner_text() for tr in table.all() if tr.is_visible()]
    page.screenshot("ui-failures-filtered.png")
    row.locator(".retry").click()
    retry = page.page.locator("li.job", has=page.page.locator(".label", has_text=f"retry of {label}"))
    retry.wait_for(timeout=15_000)
    wait_for(lambda: retry.get_attribute("data-state") == "COMPLETED", timeout=60, what="the retry to complete",
             interval=0.2)
    retried = retry.locator(".id").inner_text()
    retried_job = requests.get(f"{web_url}{JOBS}/jobs/{retried}", headers={"Authorization": f"Bearer {TOKEN}"},
                               timeout=5).json()
    tenant = page.page.inner_text("#tenant")
    done_text = row.inner_text()
    page.screenshot("ui-retried.png")

    assert row.locator(".label").inner_text() == label  # beside the id, as text
    assert [cell[0] for cell in cells] == ["#0", "#1", "#5"]
    assert cells[0][1] == f"mobile 9197{tag}00000" and cells[2][1] == f"mobile {HOSTILE_MOBILE}"
    assert cells[0][2] == cells[1][2] == "8004" and invalid_mobile != "8004" and codes == {"8004", invalid_mobile}
    assert "source" in cells[0][3]
    assert shown == ["#5"]
    # Hostile strings stayed text: no element was made of them, no script ran.
    assert row.locator(".failures img, .failures script, .label b").count() == 0
    assert page.page.evaluate("window.pwned") is None
    assert "ETA" not in done_text
    assert retried_job["totalCount"] == 3 and retried_job["failureCount"] == 3
    assert "jobs not yet ended" in tenant and "items accepted in the last 24 h" in tenant and " of " in tenant
    page.assert_stayed_on_this_machine()


def test_dashboard_pages_beyond_twenty_jobs(page, web_url, sim, worker):
    tag = uuid.uuid4().hex[:3].translate(str.maketrans("abcdef", "123456"))
    ids = [submit(web_url, customers(1, f"{tag}{i:02d}")) for i in range(22)]  # newest last
    log_in(page, web_url, TOKEN)
    page.page.locator(f'li[data-job="{ids[-1]}"]').wait_for(timeout=10_000)
    first_page = page.page.eval_on_selector_all("#list li", "rows => rows.map(r => r.dataset.job)")
    page.page.click("#older")
    page.page.locator(f'li[data-job="{ids[1]}"]').wait_for(timeout=10_000)
    second_page = page.page.eval_on_selector_all("#list li", "rows => rows.map(r => r.dataset.job)")
    page.screenshot("ui-older.png")
    page.page.click("#newer")
    page.page.locator(f'li[data-job="{ids[-1]}"]').wait_for(timeout=10_000)

    assert first_page[:20] == list(reversed(ids))[:20] and len(first_page) == 20
    assert second_page[:2] == [ids[1], ids[0]]
    assert not set(first_page) & set(second_page)
def test_dashboard_shows_a_dry_run_for_what_it_is_and_runs_it(page, web_url, sim, worker):
    tag = uuid.uuid4().hex[:3].translate(str.maketrans("abcdef", "123456"))
    known = [{"profiles": [{"firstName": f"{tag}{i}", "source": "INSTORE", "identifiers": [
        {"type": "externalId", "value": f"UI-{tag}-{i}"}, {"type": "mobile", "value": f"9196{tag}{i:05d}"}]}]}
        for i in range(2)]
    submitted = requests.post(f"{web_url}{JOBS}/bulk", json=known, params={"wait": "30"}, timeout=60,
                              headers={"Authorization": f"Bearer {TOKEN}"})
    assert submitted.status_code == 200, submitted.text
    renamed = [{"profiles": [{**known[0]["profiles"][0], "firstName": "Renamed"}]}]
    moved = [{"profiles": [{**known[1]["profiles"][0], "identifiers": [
        {"type": "externalId", "value": f"UI-{tag}-1"}, {"type": "mobile", "value": f"9196{tag}00009"}]}]}]
    invalid = [{"profiles": [{"identifiers": [{"type": "mobile", "value": "12"}], "source": "INSTORE"}]}]
    batch = renamed + moved + customers(4, tag + "9") + invalid  # 2 updates, 4 creates, 1 failure
    response = requests.post(f"{web_url}{JOBS}/bulk", json=batch, params={"dryRun": "true"}, timeout=30,
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]

    log_in(page, web_url, TOKEN)
    row = page.page.locator(f'li[data-job="{job_id}"]')
    row.wait_for(timeout=10_000)
    wait_for(lambda: row.get_attribute("data-state") == "COMPLETED", timeout=60, what="the dry run to complete",
             interval=0.2)
    row.locator("button.show-plan").click()
    row.locator(".plan tbody tr").nth(6).wait_for(timeout=10_000)
    text = row.inner_text()
    warning = row.locator(".dry-warning")
    plan = [line.split("\t") for line in row.locator(".plan tbody").inner_text().splitlines() if "\t" in line]
    page.screenshot("ui-dry-run.png")

    assert "DRY RUN · COMPLETED" in text and "Dry run: nothing was written." in text
    assert "would create 4" in text and "would update 2" in text and "would fail 1" in text
    assert warning.is_visible() and "4 of 6 profiles would be created" in warning.inner_text()
    assert "firstName: " + f"{tag}0 → Renamed" in text
    assert "+ mobile 91" in text and "\u2212 mobile 91" in text  # the new mobile replaces the old, masked
    assert f"9196{tag}00009" not in text and "91********09" in text
    assert "8056" in text  # the invalid mobile's error, in the plan
    assert len(row.locator(".plan tbody tr").all()) == 7 and plan

    page.page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.run-dry").click()
    wait_for(lambda: "applied: job" in row.inner_text() or "started job" in row.inner_text(), timeout=30,
             what="the run to start", interval=0.2)
    run_id = requests.get(f"{web_url}{JOBS}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=5).json()["runJobId"]
    real = page.page.locator(f'li[data-job="{run_id}"]')
    real.wait_for(timeout=10_000)
    wait_for(lambda: real.get_attribute("data-state") == "COMPLETED", timeout=60, what="the real job", interval=0.2)
    page.screenshot("ui-dry-run-applied.png")

    assert "created 4" in real.inner_text() and "updated 2" in real.inner_text()
    assert f"run of dry run {job_id[:8]}" in real.inner_text()
    assert row.locator("button.run-dry").is_hidden()
    page.assert_stayed_on_this_machine()
