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
    const query = new URLSearchParams({ limit: "20", ...(state ? { state } : {}) });
    const { jobs, downstreamRates } = await (await call(`jobs?${query}`)).json();
    if (mine === generation) {
      render(jobs);
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
  $("#forget").hidden = true;
  $("#login").hidden = false;
  $("#login-error").hidden = !message;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

function showJobs() {
  generation += 1;
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
$("#state").addEventListener("change", refresh);

if (token()) showJobs(); else showLogin("");
