// The jobs list: polled while visible, rows updated in place (focus and scroll stay put).

import { ApiError, AuthCancelled, getJson, request, errorDetail } from "./api.js";
import { FINAL, STATUS_LABELS, ago, announce, clock, el, makeBar, poller, setBar, span, toast } from "./util.js";
import { languageName } from "./options.js";

const PAGE_SIZE = 20;
const POLL_MS = 1500;
const MAX_STATUS_LOOKUPS = 10; // per poll: queue position and ETA of the active jobs shown

const state = {
  status: "",
  offset: 0,
  rows: new Map(), // job_id → {row, job}
  known: new Map(), // job_id → last status seen, for announcements
  firstLoad: true,
  poll: null,
};

const list = () => document.getElementById("job-list");

export function startJobs() {
  document.getElementById("status-filter").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-status]");
    if (!button) return;
    for (const other of event.currentTarget.querySelectorAll("button")) {
      other.setAttribute("aria-pressed", String(other === button));
    }
    state.status = button.dataset.status;
    state.offset = 0;
    clearRows();
    refreshJobs();
  });
  document.getElementById("page-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    clearRows();
    refreshJobs();
  });
  document.getElementById("page-next").addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    clearRows();
    refreshJobs();
  });
}

export function resumeJobs() {
  if (!state.poll) state.poll = poller(load, POLL_MS);
  else state.poll.now();
}

export function pauseJobs() {
  if (state.poll) state.poll.stop();
  state.poll = null;
}

export function refreshJobs() {
  if (state.poll) state.poll.now();
}

function clearRows() {
  state.rows.clear();
  list().replaceChildren();
}

async function load() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.offset) params.set("offset", String(state.offset));
  if (state.status) params.set("status", state.status);
  const errorBox = document.getElementById("jobs-error");
  let body;
  try {
    body = await getJson(`/api/v1/tasks?${params}`);
  } catch (error) {
    if (error instanceof AuthCancelled) {
      document.getElementById("auth-banner").hidden = false;
      return;
    }
    errorBox.textContent = `Could not load the jobs: ${error.message}`;
    errorBox.hidden = false;
    return;
  }
  errorBox.hidden = true;
  document.getElementById("auth-banner").hidden = true;
  const jobs = body.jobs || [];
  await addStanding(jobs);
  render(jobs, body);
}

/** Queue position and ETA come from the status endpoint; ask it for the active jobs shown. */
async function addStanding(jobs) {
  // The list may carry them as null (they are computed for the status endpoint only).
  const active = jobs.filter((job) => !FINAL.has(job.status) && job.queue_position == null && job.eta_seconds == null);
  await Promise.all(
    active.slice(0, MAX_STATUS_LOOKUPS).map(async (job) => {
      try {
        const status = await getJson(`/api/v1/tasks/${encodeURIComponent(job.job_id)}/status`);
        Object.assign(job, status);
      } catch {
        // the list entry is still worth showing
      }
    }),
  );
}

function render(jobs, body) {
  const ol = list();
  const seen = new Set();
  let previous = null;
  for (const job of jobs) {
    seen.add(job.job_id);
    let entry = state.rows.get(job.job_id);
    if (!entry) {
      entry = { row: makeRow(job), job };
      state.rows.set(job.job_id, entry);
      if (!state.firstLoad) entry.row.classList.add("is-new");
    }
    updateRow(entry.row, job);
    entry.job = job;
    // Keep the server's order without moving rows that are already in place.
    const wanted = previous ? previous.nextSibling : ol.firstChild;
    if (wanted !== entry.row) ol.insertBefore(entry.row, wanted);
    previous = entry.row;
    noteChange(job);
  }
  for (const [id, entry] of state.rows) {
    if (!seen.has(id)) {
      entry.row.remove();
      state.rows.delete(id);
    }
  }
  state.firstLoad = false;

  document.getElementById("jobs-empty").hidden = jobs.length > 0;
  const emptyTitle = document.querySelector("#jobs-empty .empty-title");
  emptyTitle.textContent = state.status ? `No ${STATUS_LABELS[state.status].toLowerCase()} jobs` : "No jobs yet";

  const total = typeof body.total === "number" ? body.total : null;
  document.getElementById("jobs-total").textContent = total !== null ? `(${total})` : "";
  const pager = document.getElementById("pager");
  if (total === null) {
    pager.hidden = true; // a server without paging: the newest jobs are all we can show
    return;
  }
  pager.hidden = total <= PAGE_SIZE && state.offset === 0;
  const first = jobs.length ? state.offset + 1 : 0;
  document.getElementById("page-info").textContent = `${first}–${state.offset + jobs.length} of ${total}`;
  document.getElementById("page-prev").disabled = state.offset === 0;
  document.getElementById("page-next").disabled = state.offset + jobs.length >= total;
}

function noteChange(job) {
  const before = state.known.get(job.job_id);
  state.known.set(job.job_id, job.status);
  if (before && before !== job.status) {
    const reason = job.status === "FAILED" && job.error_message ? `: ${job.error_message}` : "";
    announce(`${job.filename} is now ${STATUS_LABELS[job.status].toLowerCase()}${reason}`);
  }
}

function makeRow(job) {
  const name = el("a", { class: "job-name", href: `#/jobs/${encodeURIComponent(job.job_id)}` });
  const meta = el("p", { class: "job-meta" });
  const error = el("p", { class: "job-error", hidden: true });
  const badge = el("span", { class: "badge" });
  const bar = makeBar(`Progress of ${job.filename}`);
  const progressText = el("span", { class: "job-progress-text" });
  const progress = el("div", { class: "job-progress" }, bar, progressText);
  const cancel = el("button", { class: "btn btn-ghost btn-small", type: "button", text: "Cancel", "data-action": "cancel" });
  const remove = el("button", { class: "btn btn-ghost btn-small btn-danger", type: "button", text: "Delete", "data-action": "delete" });
  const open = el("a", { class: "btn btn-ghost btn-small", href: name.getAttribute("href"), text: "Open" });
  const actions = el("div", { class: "job-actions" }, open, cancel, remove);
  const row = el("li", { class: "job", "data-id": job.job_id }, el("div", { class: "job-main" }, name, meta, error), badge, progress, actions);
  row._parts = { name, meta, error, badge, bar, progressText, progress, open, cancel, remove };
  cancel.addEventListener("click", () => cancelJob(row));
  remove.addEventListener("click", () => deleteJob(row));
  return row;
}

function updateRow(row, job) {
  const p = row._parts;
  row.dataset.status = job.status;
  p.name.textContent = job.filename;
  p.name.title = job.filename;
  p.name.setAttribute("aria-label", `${job.filename}, ${STATUS_LABELS[job.status] || job.status}${job.status === "COMPLETED" ? ", open the transcript" : ""}`);
  p.meta.textContent = metaLine(job);
  p.error.hidden = !(job.status === "FAILED" && job.error_message);
  p.error.textContent = job.status === "FAILED" ? job.error_message || "" : "";
  p.badge.dataset.status = job.status;
  p.badge.textContent = STATUS_LABELS[job.status] || job.status;

  const [percent, text] = progressOf(job);
  p.progress.hidden = percent === undefined;
  if (percent !== undefined) setBar(p.bar, percent);
  p.progressText.textContent = text;

  p.open.hidden = job.status !== "COMPLETED";
  p.open.setAttribute("aria-label", `Open the transcript of ${job.filename}`);
  p.cancel.hidden = FINAL.has(job.status);
  p.remove.hidden = !FINAL.has(job.status);
  p.cancel.setAttribute("aria-label", `Cancel ${job.filename}`);
  p.remove.setAttribute("aria-label", p.remove.classList.contains("confirming") ? `Really delete ${job.filename}` : `Delete ${job.filename}`);
}

function metaLine(job) {
  const parts = [];
  if (job.duration_seconds) parts.push(clock(job.duration_seconds));
  const language = job.detected_language || (job.language !== "auto" ? job.language : "");
  if (language) parts.push(languageName(language));
  else if (job.language === "auto") parts.push("Auto-detect");
  if (job.processing_time_seconds && job.status === "COMPLETED") parts.push(`took ${span(job.processing_time_seconds)}`);
  parts.push(ago(job.created_at));
  return parts.filter(Boolean).join(" · ");
}

/** [percent or null (indeterminate) or undefined (no bar), words]. */
function progressOf(job) {
  const eta = typeof job.eta_seconds === "number" ? job.eta_seconds : null;
  if (job.status === "PENDING") {
    const words = [];
    if (typeof job.queue_position === "number") {
      words.push(job.queue_position === 0 ? "Next in line" : `${job.queue_position} ahead in the queue`);
    } else {
      words.push("In the queue");
    }
    if (eta !== null) words.push(`done in ~${span(eta)}`);
    return [null, words.join(" · ")];
  }
  if (job.status === "PROCESSING") {
    const percent = Number(job.progress) || 0;
    const words = [`${Math.floor(percent)} %`];
    if (eta !== null) words.push(`~${span(eta)} left`);
    return [percent, words.join(" · ")];
  }
  return [undefined, ""];
}

async function cancelJob(row) {
  const id = row.dataset.id;
  const button = row._parts.cancel;
  button.disabled = true;
  try {
    const response = await request(`/api/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
    announce(`Cancelled ${row._parts.name.textContent}`);
  } catch (error) {
    if (!(error instanceof AuthCancelled)) toast(`Could not cancel: ${error.message}`, { error: true });
  } finally {
    button.disabled = false;
    refreshJobs();
  }
}

async function deleteJob(row) {
  const button = row._parts.remove;
  // Two steps instead of confirm(): the first click arms the button for a few seconds.
  if (!button.classList.contains("confirming")) {
    button.classList.add("confirming");
    button.textContent = "Delete?";
    button.setAttribute("aria-label", `Really delete ${row._parts.name.textContent}`);
    setTimeout(() => {
      button.classList.remove("confirming");
      button.textContent = "Delete";
      button.setAttribute("aria-label", `Delete ${row._parts.name.textContent}`);
    }, 4000);
    return;
  }
  const id = row.dataset.id;
  const name = row._parts.name.textContent;
  button.disabled = true;
  try {
    const response = await request(`/api/v1/tasks/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (!response.ok && response.status !== 404) throw new ApiError(response.status, await errorDetail(response));
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    state.rows.delete(id);
    (next?.querySelector("a.job-name") || document.getElementById("jobs-title")).focus?.();
    announce(`Deleted ${name}`);
  } catch (error) {
    if (!(error instanceof AuthCancelled)) toast(`Could not delete: ${error.message}`, { error: true });
    button.disabled = false;
  } finally {
    refreshJobs();
  }
}
