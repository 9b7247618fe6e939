// The job dashboard: the tenant's recent jobs, polled while any of them runs.
// The token is kept in sessionStorage (this tab only) and sent in the Authorization header, never in a URL.
"use strict";

const API = new URL("../v2/integrations/customer/upsert/", document.baseURI);
const TOKEN_KEY = "customer-upsert.token";
const FAST_MS = 1000;   // while a job is queued or running
const SLOW_MS = 5000;   // otherwise: new jobs from elsewhere still show up
const $ = (selector, root = document) => root.querySelector(selector);

let timer = null;
let generation = 0;     // a poll started before the token changed is ignored

class Unauthorized extends Error {}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function call(path, options = {}) {
  const sent = token();
  const response = await fetch(new URL(path, API), {
    ...options,
    cache: "no-store",
    headers: { ...(options.headers || {}), Authorization: `Bearer ${sent}` },
  });
  if (response.status === 401) {
    if (token() === sent) {  // not an answer to a token already replaced
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("That token was refused (401 Unauthorized). Enter it again.");
    }
    throw new Unauthorized();
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).errors.map((e) => e.message).join("; "); } catch (_) { /* not JSON */ }
    throw new Error(`HTTP ${response.status}: ${detail}`);
  }
  return response;
}

// -- formatting -------------------------------------------------------------------------------

const number = (n) => Number(n).toLocaleString("en-US");

function duration(seconds) {
  if (seconds < 1) return "under 1 s";
  seconds = Math.round(seconds);
  if (seconds < 60) return `${seconds} s`;
  const m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function clock(stamp) {
  const d = new Date(stamp);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

function rate(job) {  // items worked per second since the job started (cancelled items were not worked)
  const worked = job.processedCount - (job.cancelledCount || 0);
  if (!job.startedAt || worked <= 0) return null;
  const end = job.finishedAt ? Date.parse(job.finishedAt) : Date.now();
  const seconds = (end - Date.parse(job.startedAt)) / 1000;
  return seconds > 0 ? worked / seconds : null;
}

function pace(job) {
  const r = rate(job);
  const perSecond = r === null ? "" : `${r < 10 ? r.toFixed(1) : Math.round(r)} items/s`;
  if (job.finishedAt) {
    const took = job.startedAt ? duration((Date.parse(job.finishedAt) - Date.parse(job.startedAt)) / 1000) : "";
    return [perSecond, took && `took ${took}`].filter(Boolean).join(" · ");
  }
  if (job.state === "CANCELLED") return [perSecond, "cancelled: items in flight finish"].filter(Boolean).join(" · ");
  if (job.state === "QUEUED") return "waiting for a worker";
  const left = job.estimatedSecondsLeft;
  const eta = left === null || left === undefined ? "ETA unknown"
    : `ETA ${duration(left)}` + (job.estimatedCompletionAt ? ` (${clock(job.estimatedCompletionAt)})` : "");
  return [perSecond, eta].filter(Boolean).join(" · ");
}

// -- rendering --------------------------------------------------------------------------------

function render(jobs) {
  const list = $("#list");
  const seen = new Set();
  jobs.forEach((job, position) => {
    seen.add(job.jobId);
    let row = list.querySelector(`li[data-job="${job.jobId}"]`);
    if (!row) row = newRow(job.jobId);
    if (list.children[position] !== row) list.insertBefore(row, list.children[position] || null);
    update(row, job);
  });
  for (const row of [...list.children]) if (!seen.has(row.dataset.job)) row.remove();
  $("#empty").hidden = jobs.length > 0;
}

function newRow(jobId) {
  const row = $("#job-template").content.firstElementChild.cloneNode(true);
  row.dataset.job = jobId;
  const id = $(".id", row);
  id.textContent = jobId;
  id.addEventListener("click", () => getSelection().selectAllChildren(id));
  $(".copy", row).addEventListener("click", () => copy(row, jobId));
  $(".cancel", row).addEventListener("click", () => cancel(row, jobId));
  $(".download", row).addEventListener("click", () => download(row, jobId));
  wireFailures(row, jobId);
  wireDryRun(row, jobId);
  return row;
}

function update(row, job) {
  const total = job.totalCount, done = job.processedCount;
  const cancelled = job.cancelledCount || 0, failed = job.failureCount - cancelled;
  const state = $(".state", row);
  state.textContent = job.state;
  state.className = `state ${job.state.toLowerCase()}`;
  row.dataset.state = job.state;
  $(".created", row).textContent = `submitted ${clock(job.createdAt)}`;
  $(".label", row).textContent = job.label || "";

  const bar = $(".bar", row);
  bar.setAttribute("aria-valuemax", total);
  bar.setAttribute("aria-valuenow", done);
  bar.setAttribute("aria-label", `${number(done)} of ${number(total)} items processed`);
  const share = (n) => `${total ? (100 * n) / total : 0}%`;
  for (const [part, count] of [["ok", job.successCount], ["failed", failed], ["cancelled", cancelled]]) {
    const segment = $(`.${part}`, bar);
    segment.style.width = share(count);
    segment.classList.toggle("some", count > 0);  // one failure in thousands still shows
  }

  const percent = total ? Math.floor((100 * done) / total) : 100;
  $(".progress-text", row).textContent = `${number(done)} / ${number(total)} processed (${percent}%)`;
  for (const [name, count] of [["created", job.createdCount], ["updated", job.updatedCount],
                               ["failed", failed], ["cancelled", cancelled]]) {
    const cell = $(`.${name}-count`, row);
    cell.textContent = `${name} ${number(count)}`;
    cell.classList.toggle("nonzero", count > 0);
  }
  $(".pace", row).textContent = pace(job);

  $(".cancel", row).hidden = Boolean(job.finishedAt) || job.state === "CANCELLED";
  const download = $(".download", row);
  download.hidden = job.failureCount === 0;
  download.textContent = `Download ${cancelled ? "failed and cancelled" : "failed"} items (${number(job.failureCount)})`;
  $(".actions", row).hidden = $(".cancel", row).hidden && download.hidden && !$(".message", row).textContent;
  updateFailures(row, job);
  updateDryRun(row, job);
}

function say(row, text, isError = false) {
  $(".actions", row).hidden = false;
  const message = $(".message", row);
  message.textContent = text;
  message.classList.toggle("error", isError);
}

// -- actions ----------------------------------------------------------------------------------

async function copy(row, jobId) {
  try {
    await navigator.clipboard.writeText(jobId);
    say(row, "job id copied");
  } catch (_) {
    getSelection().selectAllChildren($(".id", row));
    say(row, "job id selected: press Ctrl-C to copy");
  }
}

async function cancel(row, jobId) {
  if (!confirm(`Cancel job ${jobId}?\nItems not yet started end CANCELLED; items in flight finish.`)) return;
  try {
    const job = await (await call(`jobs/${jobId}`, { method: "DELETE" })).json();
    update(row, job);
    say(row, job.state === "CANCELLED" ? "cancelled: items not yet started end CANCELLED"
      : `the job had already finished (${job.state}); nothing was cancelled`);
    refresh();
  } catch (error) {
    if (!(error instanceof Unauthorized)) say(row, `cancel failed: ${error.message}`, true);
  }
}

async function download(row, jobId) {
  say(row, "preparing the download…");
  try {
    const response = await call(`jobs/${jobId}/results?format=ndjson&outcome=failed`);
    const blob = new Blob([await response.blob()], { type: "application/x-ndjson" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${jobId}-failed.ndjson`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    say(row, `saved ${link.download}: resubmit it with customer-upsert submit ${link.download}`);
  } catch (error) {
    if (!(error instanceof Unauthorized)) say(row, `download failed: ${error.message}`, true);
  }
}

// -- failures: each job's failed items, a filter by code, retry them as a new job ------------------
// The table opens by itself when items failed (a cancel's items alone leave it closed); it pages by
// FAILURES_PAGE; the filter applies to the items shown; the retry submits every failed (and cancelled)
// item's input again, as a new job labelled "retry of ...".
// Everything the server sent is shown with textContent: an identifier or a message is text, never HTML.

const FAILURES_PAGE = 50;
const failures = new WeakMap();  // row -> { loadedFor, items, loading }

function wireFailures(row, jobId) {
  failures.set(row, { loadedFor: -1, items: [], loading: false });
  const details = $(".failures", row);
  details.addEventListener("toggle", () => { if (details.open) loadFailures(row, jobId, false); });
  $(".code-filter", row).addEventListener("change", () => filterFailures(row));
  $(".more-failures", row).addEventListener("click", () => loadFailures(row, jobId, true));
  $(".retry", row).addEventListener("click", () => retryFailed(row, jobId));
}

function updateFailures(row, job) {
  const details = $(".failures", row);
  const kept = failures.get(row);
  details.hidden = job.failureCount === 0;
  if (details.hidden) return;
  const cancelled = job.cancelledCount || 0, failed = job.failureCount - cancelled;
  $(".failures-title", row).textContent = cancelled ? "Failed and cancelled items" : "Failed items";
  $(".failures-count", row).textContent = cancelled
    ? `(${number(failed)} failed, ${number(cancelled)} cancelled)` : `(${number(failed)})`;
  $(".retry", row).hidden = !job.finishedAt;  // the list to retry is whole once the job has ended
  if (!row.dataset.failuresOpened && failed > 0) {  // failures first: open once, then as the person leaves it
    row.dataset.failuresOpened = "1";
    details.open = true;
  }
  row.dataset.failureCount = job.failureCount;
  if (details.open && kept.loadedFor !== job.failureCount && (job.finishedAt || kept.loadedFor < 0)) {
    loadFailures(row, job.jobId, false);
  }
}

async function loadFailures(row, jobId, more) {
  const kept = failures.get(row);
  if (kept.loading || (!more && kept.loadedFor === Number(row.dataset.failureCount))) return;
  kept.loading = true;
  const note = $(".failures-note", row);
  try {
    const offset = more ? kept.items.length : 0;
    const query = new URLSearchParams({ outcome: "failed", limit: String(FAILURES_PAGE), offset: String(offset) });
    const answer = await (await call(`jobs/${jobId}/results?${query}`)).json();
    kept.items = more ? kept.items.concat(answer.response) : answer.response;
    kept.loadedFor = answer.failureCount;
    renderFailures(row, answer.failureCount);
    note.textContent = "";
  } catch (error) {
    if (!(error instanceof Unauthorized)) note.textContent = `cannot load the failed items: ${error.message}`;
  }
  kept.loading = false;
}

function identifierOf(input) {
  const profile = input && Array.isArray(input.profiles) ? input.profiles[0] : null;
  const first = profile && Array.isArray(profile.identifiers) ? profile.identifiers[0] : null;
  if (first && typeof first === "object") return `${first.type} ${first.value}`;
  return JSON.stringify(input === undefined ? null : input).slice(0, 120);
}

function renderFailures(row, total) {
  const { items } = failures.get(row);
  const body = $(".failed-items tbody", row);
  const rows = items.map((item) => {
    const errors = Array.isArray(item.errors) ? item.errors : [];
    const tr = document.createElement("tr");
    tr.dataset.codes = errors.map((e) => String(e.code)).join(" ");
    const cells = [`#${item.index}`, identifierOf(item.input), errors.map((e) => String(e.code)).join(", "),
                   errors.map((e) => (e.field ? `${e.message} (${e.field})` : String(e.message))).join("; ")];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  body.replaceChildren(...rows);
  const select = $(".code-filter", row);
  const chosen = select.value;
  const codes = [...new Set(items.flatMap((item) => (item.errors || []).map((e) => String(e.code))))].sort();
  const options = codes.map((code) => {
    const option = document.createElement("option");
    option.value = code;
    option.textContent = `${code} (${number(rows.filter((tr) => tr.dataset.codes.split(" ").includes(code)).length)})`;
    return option;
  });
  const all = document.createElement("option");
  all.value = "";
  all.textContent = "all codes";
  select.replaceChildren(all, ...options);
  select.value = codes.includes(chosen) ? chosen : "";
  const more = $(".more-failures", row);
  more.hidden = items.length >= total;
  more.textContent = `Show more (${number(items.length)} of ${number(total)} shown)`;
  filterFailures(row);
}

function filterFailures(row) {
  const code = $(".code-filter", row).value;
  for (const tr of $(".failed-items tbody", row).children) {
    tr.hidden = code !== "" && !tr.dataset.codes.split(" ").includes(code);
  }
}

async function retryFailed(row, jobId) {
  const note = $(".failures-note", row);
  note.textContent = "submitting the failed items again…";
  try {
    const text = await (await call(`jobs/${jobId}/results?format=ndjson&outcome=failed`)).text();
    const inputs = text.split("\n").filter((line) => line.trim()).map((line) => JSON.stringify(JSON.parse(line).input));
    const label = `retry of ${$(".label", row).textContent || jobId}`.slice(0, 200);
    const job = await (await call(`bulk?${new URLSearchParams({ label })}`, {
      method: "POST", headers: { "Content-Type": "application/x-ndjson" }, body: inputs.join("\n") + "\n",
    })).json();
    note.textContent = `submitted ${number(job.totalCount)} items again as job ${job.jobId}`;
    page = 0;
    refresh();
  } catch (error) {
    if (!(error instanceof Unauthorized)) note.textContent = `retry failed: ${error.message}`;
  }
}

// -- the tenant: quotas with use and limit ---------------------------------------------------------

async function refreshTenant() {
  try {
    const tenant = await (await call("tenant")).json();
    $(".tenant-id", $("#tenant")).textContent = tenant.tenant;
    $(".quotas", $("#tenant")).replaceChildren(...tenant.quotas.map((quota) => {
      const li = document.createElement("li");
      li.dataset.quota = quota.quota;
      const share = quota.limit ? Math.min(100, (100 * quota.used) / quota.limit) : 0;
      const meter = document.createElement("meter");
      meter.min = 0;
      meter.max = quota.limit || 1;
      meter.value = quota.limit ? quota.used : 0;
      meter.high = (quota.limit || 1) * 0.8;
      const text = document.createElement("span");
      text.textContent = `${quota.counts}: ${number(quota.used)}` +
        (quota.limit ? ` of ${number(quota.limit)} (${Math.round(share)}%)` : " (no limit)");
      li.append(meter, text);
      return li;
    }));
    $("#tenant").hidden = false;
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    $("#tenant").hidden = true;  // the jobs still show; the list's status line reports a broken API
  }
}

// -- paging: 20 jobs a page, older ones a click away ----------------------------------------------

const PAGE = 20;
let page = 0;

function showPages(older) {
  $("#pages").hidden = page === 0 && !older;
  $("#newer").disabled = page === 0;
  $("#older").disabled = !older;
  $("#page-text").textContent = `jobs ${number(page * PAGE + 1)} to ${number(page * PAGE + $("#list").children.length)}`;
}

// -- dry runs: the counts up front, the planned changes per profile, a warning, the run button ---------

const PLAN_ROWS = 100;           // profiles shown in the plan; the whole plan is in the results export
const MOSTLY_CREATES = 0.5;      // share of creates past which a batch meant to update looks wrong

function wireDryRun(row, jobId) {
  $(".run-dry", row).addEventListener("click", () => runDryRun(row, jobId));
  $(".show-plan", row).addEventListener("click", () => togglePlan(row, jobId));
}

function updateDryRun(row, job) {
  const section = $(".dry-run", row);
  row.classList.toggle("dry", Boolean(job.dryRun));
  section.hidden = !job.dryRun;
  if (job.dryRunOf) $(".created", row).textContent += ` · run of dry run ${job.dryRunOf.slice(0, 8)}…`;
  if (!job.dryRun) return;
  const state = $(".state", row);
  state.textContent = `DRY RUN · ${job.state}`;
  const creates = job.wouldCreateCount || 0, updates = job.wouldUpdateCount || 0;
  const fails = job.failureCount - (job.cancelledCount || 0);
  $(".would-create", row).textContent = `would create ${number(creates)}`;
  $(".would-update", row).textContent = `would update ${number(updates)}`;
  $(".would-fail", row).textContent = `would fail ${number(fails)}`;
  $(".would-fail", row).classList.toggle("nonzero", fails > 0);

  const warning = $(".dry-warning", row);
  const predicted = creates + updates;
  warning.hidden = !(predicted > 0 && creates / predicted > MOSTLY_CREATES);
  warning.textContent = `${number(creates)} of ${number(predicted)} profiles would be created as new customers. ` +
    "If this batch was meant to update existing customers, check its source and accountId: a wrong one finds " +
    "nobody, and every profile becomes a duplicate.";

  const finished = job.state === "COMPLETED";
  const run = $(".run-dry", row);
  run.hidden = !finished || Boolean(job.runJobId);
  $(".show-plan", row).hidden = job.processedCount === 0;
  if (job.runJobId) sayDry(row, `applied: job ${job.runJobId}`);
  else if (!finished && job.state !== "CANCELLED") sayDry(row, "predicting: the run button comes when it ends");
  else if (job.state === "CANCELLED") sayDry(row, "cancelled: a cancelled dry run cannot be run; submit it again");
  else if ($(".dry-message", row).dataset.kind === "progress") sayDry(row, "");
}

function sayDry(row, text, isError = false, kind = "progress") {
  const message = $(".dry-message", row);
  message.textContent = text;
  message.dataset.kind = kind;
  message.classList.toggle("error", isError);
}

async function runDryRun(row, jobId) {
  const creates = $(".would-create", row).textContent, updates = $(".would-update", row).textContent;
  if (!confirm(`Run dry run ${jobId} for real?\nIt ${creates} and ${updates} customers downstream.`)) return;
  const button = $(".run-dry", row);
  button.disabled = true;
  try {
    const job = await (await call(`jobs/${jobId}/run`, { method: "POST" })).json();
    sayDry(row, `started job ${job.jobId}`, false, "result");
    button.hidden = true;
    refresh();
  } catch (error) {
    if (!(error instanceof Unauthorized)) sayDry(row, `run failed: ${error.message}`, true, "result");
  } finally {
    button.disabled = false;
  }
}

async function togglePlan(row, jobId) {
  const plan = $(".plan", row), toggle = $(".show-plan", row);
  if (!plan.hidden) {
    plan.hidden = true;
    toggle.textContent = "Show planned changes";
    return;
  }
  toggle.textContent = "Hide planned changes";
  plan.hidden = false;
  $(".plan-note", row).textContent = "loading…";
  try {
    const page = await (await call(`jobs/${jobId}/results?limit=${PLAN_ROWS}`)).json();
    $("tbody", plan).replaceChildren(...page.response.map(planRow));
    $(".plan-note", row).textContent = page.totalCount > page.response.length
      ? `the first ${number(page.response.length)} of ${number(page.totalCount)} profiles; every one is in ` +
        `customer-upsert results ${jobId}`
      : "";
  } catch (error) {
    if (!(error instanceof Unauthorized)) $(".plan-note", row).textContent = `cannot load the plan: ${error.message}`;
  }
}

function cell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

const shown = (value) => value === null || value === undefined ? "—"
  : typeof value === "string" ? value : JSON.stringify(value);

function planRow(item) {
  const tr = document.createElement("tr");
  const action = (item.action || "").replace("WOULD_", "").toLowerCase();
  tr.className = `plan-${action}`;
  const customer = item.entityId ? `customer ${item.entityId}`
    : item.customerOfItem !== undefined ? `the one #${item.customerOfItem} creates`
    : action === "create" ? "new" : "—";
  const changes = Object.entries(item.changes || {}).map(([field, c]) => `${field}: ${shown(c.old)} → ${shown(c.new)}`);
  const errors = (item.errors || []).map((e) => `${e.code}: ${e.message}`);
  const ids = item.identifierChanges || { add: [], remove: [] };
  const identifiers = [...ids.add.map((i) => `+ ${i.type} ${i.value}`), ...ids.remove.map((i) => `− ${i.type} ${i.value}`)];
  tr.append(cell(String(item.index)), cell(action || item.action, "would"), cell(customer),
            cell([...changes, ...errors].join("\n") || "no change", errors.length ? "error" : ""),
            cell(identifiers.join("\n") || "—"));
  return tr;
}

// -- the downstream's rates ---------------------------------------------------------------------

// One line per limited endpoint: the rate learned from the downstream's 429s, under any configured
// ceiling; the 429s seen and the time calls waited for tokens.
function showRates(rates) {
  const parts = Object.entries(rates || {}).filter(([, r]) => r.perMinute !== null).map(([endpoint, r]) =>
    `${endpoint} ${Math.round(r.perMinute)}/min` + (r.limitPerMinute ? ` (limit ${r.limitPerMinute})` : "") +
    (r.found ? "" : " (finding)") +
    (r.throttled ? ` · ${r.throttled}×429` : "") + (r.waitedSeconds ? ` · waited ${duration(r.waitedSeconds)}` : ""));
  $("#rates").textContent = parts.length ? `Downstream rates: ${parts.join("; ")}` : "";
}

// -- polling and the token ----------------------------------------------------------------------

let loading = false;     // one request at a time; a refresh asked for meanwhile runs right after
let again = false;

async function refresh() {
  if (loading) { again = true; return; }
  loading = true;
  clearTimeout(timer);
  const mine = generation;
  let wait = SLOW_MS;
  try {
    const state = $("#state").value;
    const query = new URLSearchParams({ limit: String(PAGE + 1), offset: String(page * PAGE),
                                        ...(state ? { state } : {}) });
    const [{ jobs: found, downstreamRates }] = await Promise.all([(await call(`jobs?${query}`)).json(),
                                                                  refreshTenant()]);
    if (mine === generation) {
      const jobs = found.slice(0, PAGE);
      render(jobs);
      showPages(found.length > PAGE);
      showRates(downstreamRates);
      const active = jobs.some((job) => !job.finishedAt);
      wait = active ? FAST_MS : SLOW_MS;
      $("#status").textContent = `updated ${new Date().toLocaleTimeString()}` +
        (active ? " · refreshing every second while a job runs" : "");
      $("#status").classList.remove("error");
    }
  } catch (error) {
    if (!(error instanceof Unauthorized) && mine === generation) {
      $("#status").textContent = `cannot load jobs: ${error.message}; retrying`;
      $("#status").classList.add("error");
    }
  }
  loading = false;
  if ($("#jobs").hidden) return;  // asked for the token meanwhile
  timer = setTimeout(refresh, again || mine !== generation ? 0 : wait);
  again = false;
}

function showLogin(message) {
  generation += 1;
  clearTimeout(timer);
  $("#jobs").hidden = true;
  $("#tenant").hidden = true;
  $("#forget").hidden = true;
  $("#login").hidden = false;
  $("#login-error").hidden = !message;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

function showJobs() {
  generation += 1;
  page = 0;
  $("#login").hidden = true;
  $("#jobs").hidden = false;
  $("#forget").hidden = false;
  $("#list").replaceChildren();
  refresh();
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("#token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("#token").value = "";
  showJobs();
});
$("#forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("");
});
$("#state").addEventListener("change", () => { page = 0; refresh(); });
$("#newer").addEventListener("click", () => { page = Math.max(0, page - 1); refresh(); });
$("#older").addEventListener("click", () => { page += 1; refresh(); });

if (token()) showJobs(); else showLogin("");
