// One job's transcript: the player, the segments (click to play from there, the one playing
// highlighted, the current word marked), search, downloads and copy.

import { AuthCancelled, errorDetail, getJson, request } from "./api.js";
import { FINAL, STATUS_LABELS, announce, clock, el, poller, setBar, span, toast } from "./util.js";
import { languageName } from "./options.js";

const FORMATS = ["txt", "srt", "vtt", "tsv", "json"];
const $ = (id) => document.getElementById(id);

let view = null; // {jobId, poll, segments, rows, current, word, raf, matches, matchAt, text}

export function setUpTranscript() {
  const audio = $("player");
  audio.addEventListener("timeupdate", () => follow());
  audio.addEventListener("seeked", () => follow());
  audio.addEventListener("play", () => loop());
  audio.addEventListener("error", () => {
    if (!view || !audio.getAttribute("src")) return;
    if (!view.retriedAudio) {
      view.retriedAudio = true; // an expired signed link (a tab left asleep): new links, once
      renewLinks(view).then((changed) => {
        if (!changed) explainAudio(view);
      });
      return;
    }
    explainAudio(view);
  });
  $("segments").addEventListener("click", (event) => {
    const row = event.target.closest(".segment");
    if (!row || !view) return;
    if (!event.target.closest("button") && window.getSelection()?.toString()) return; // selecting text
    const index = Number(row.dataset.index);
    const word = event.target.closest(".word");
    const words = view.segments[index]?.words;
    if (word && row._words && Array.isArray(words)) playFrom(index, words[row._words.indexOf(word)]?.start);
    else playFrom(index);
  });
  const search = $("t-search");
  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => applySearch(search.value), 120);
  });
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      applySearch(search.value, { keepPosition: true });
      step(event.shiftKey ? -1 : 1);
    } else if (event.key === "Escape" && search.value) {
      event.preventDefault();
      search.value = "";
      applySearch("");
    }
  });
  $("t-search-next").addEventListener("click", () => step(1));
  $("t-search-prev").addEventListener("click", () => step(-1));
  $("t-copy").addEventListener("click", copyText);
  document.addEventListener("keydown", (event) => {
    if (!view || $("view-transcript").hidden) return;
    const typing = event.target.closest?.("input, select, textarea, [contenteditable]");
    if (event.key === "/" && !typing) {
      event.preventDefault();
      search.focus();
    }
  });
}

export function openTranscript(jobId) {
  closeTranscript();
  view = { jobId, segments: [], rows: [], current: -1, word: null, raf: 0, matches: [], matchAt: -1, text: "", loaded: false };
  $("t-title").textContent = "Loading…";
  $("t-meta").textContent = "";
  $("t-badge").hidden = true;
  $("t-state").hidden = true;
  $("t-body").hidden = true;
  $("t-search").value = "";
  $("segments").replaceChildren();
  const mine = view;
  view.poll = poller(() => refresh(mine), 1500);
}

export function closeTranscript() {
  if (!view) return;
  view.poll?.stop();
  clearTimeout(view.linkTimer);
  cancelAnimationFrame(view.raf);
  const audio = $("player");
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
  audio.hidden = false;
  $("t-audio-error").hidden = true;
  view = null;
}

async function refresh(mine) {
  if (view !== mine) return;
  let job;
  try {
    job = await getJson(`/api/v1/tasks/${encodeURIComponent(mine.jobId)}/status`);
  } catch (error) {
    if (view !== mine) return;
    if (error instanceof AuthCancelled) {
      $("auth-banner").hidden = false;
      return;
    }
    showState(error.status === 404 ? "There is no job with this id: it may have been deleted." : `Could not load the job: ${error.message}`);
    $("t-title").textContent = error.status === 404 ? "Job not found" : "Job";
    if (error.status === 404) mine.poll.stop();
    return;
  }
  if (view !== mine) return;
  showHeader(job);
  if (job.status === "COMPLETED") {
    mine.poll.stop();
    if (!mine.loaded) {
      mine.loaded = true;
      await loadTranscript(mine, job);
    }
    return;
  }
  if (FINAL.has(job.status)) mine.poll.stop();
  showProgress(job);
}

function showHeader(job) {
  document.title = `${job.filename} · smap-stt`;
  $("t-title").textContent = job.filename;
  const badge = $("t-badge");
  if (badge.dataset.status && badge.dataset.status !== job.status) announce(`${job.filename} is now ${STATUS_LABELS[job.status].toLowerCase()}`);
  badge.hidden = false;
  badge.dataset.status = job.status;
  badge.textContent = STATUS_LABELS[job.status] || job.status;
  const parts = [];
  if (job.duration_seconds) parts.push(clock(job.duration_seconds));
  const language = job.detected_language || (job.language !== "auto" ? job.language : "");
  if (language) parts.push(languageName(language) + (job.language === "auto" ? " (detected)" : ""));
  if (job.model) parts.push(`model ${job.model}`);
  if (job.task === "translate") parts.push("translated to English");
  if (job.processing_time_seconds) parts.push(`transcribed in ${span(job.processing_time_seconds)}`);
  if (job.created_at) parts.push(new Date(job.created_at).toLocaleString());
  $("t-meta").textContent = parts.join(" · ");
}

function showState(text, percent) {
  $("t-state").hidden = false;
  $("t-state-text").textContent = text;
  const bar = $("t-progress");
  bar.hidden = percent === undefined;
  if (percent !== undefined) setBar(bar, percent);
}

function showProgress(job) {
  const eta = typeof job.eta_seconds === "number" ? ` · done in about ${span(job.eta_seconds)}` : "";
  if (job.status === "PENDING") {
    const where = typeof job.queue_position === "number" ? (job.queue_position === 0 ? " · next in line" : ` · ${job.queue_position} ahead`) : "";
    showState(`Waiting in the queue${where}${eta}. The transcript appears here when it is ready.`, null);
  } else if (job.status === "PROCESSING") {
    showState(`Transcribing: ${Math.floor(job.progress || 0)} %${eta}`, job.progress || 0);
  } else if (job.status === "FAILED") {
    showState(`This job failed: ${job.error_message || "no reason was recorded"}`);
  } else if (job.status === "CANCELLED") {
    showState("This job was cancelled before it finished.");
  }
}

/** The stored transcript document (segments with words when asked for), else the result. */
async function fetchDocument(jobId) {
  const id = encodeURIComponent(jobId);
  try {
    const response = await request(`/api/v1/tasks/${id}/download`);
    if (response.ok) {
      const body = await response.json();
      if (Array.isArray(body.segments)) return body;
    }
  } catch (error) {
    if (error instanceof AuthCancelled) throw error;
  }
  const result = await getJson(`/api/v1/tasks/${id}/result`);
  return { text: result.transcription, segments: result.segments || [] };
}

async function loadTranscript(mine, job) {
  let links;
  let doc;
  try {
    [links, doc] = await Promise.all([getJson(`/api/v1/tasks/${encodeURIComponent(mine.jobId)}/links`), fetchDocument(mine.jobId)]);
  } catch (error) {
    if (view !== mine) return;
    mine.loaded = false;
    showState(`Could not load the transcript: ${error.message}`);
    return;
  }
  if (view !== mine) return;
  $("t-state").hidden = true;
  $("t-body").hidden = false;
  const audio = $("player");
  audio.setAttribute("aria-label", `Audio of ${job.filename}`);
  useLinks(mine, links);

  mine.segments = (doc.segments || []).filter((segment) => Number.isFinite(segment.start));
  mine.text = (doc.text || mine.segments.map((segment) => String(segment.text || "").trim()).join(" ")).trim();
  renderSegments(mine);
  applySearch($("t-search").value);
}

/**
 * Point the player and the download buttons at `links`. Signed links expire (expires_at):
 * new ones are fetched a minute before, and the player keeps its place and state.
 */
function useLinks(mine, links) {
  const audio = $("player");
  const changed = audio.getAttribute("src") !== links.audio;
  if (changed) {
    const at = audio.currentTime;
    const playing = !audio.paused;
    const first = !audio.getAttribute("src");
    audio.src = links.audio;
    if (!first) {
      audio.currentTime = at;
      if (playing) audio.play().catch(() => {});
    }
  }
  $("t-downloads").replaceChildren(
    ...FORMATS.filter((fmt) => links.downloads?.[fmt]).map((fmt) =>
      el("a", { href: links.downloads[fmt], download: "", "aria-label": `Download as ${fmt.toUpperCase()}`, "data-format": fmt, text: fmt.toUpperCase() }),
    ),
  );
  clearTimeout(mine.linkTimer);
  const expires = links.expires_at ? new Date(links.expires_at).getTime() : NaN;
  if (Number.isFinite(expires)) {
    const wait = Math.max(expires - Date.now() - 60_000, 30_000);
    mine.linkTimer = setTimeout(() => renewLinks(mine), wait);
  }
  return changed;
}

async function renewLinks(mine) {
  if (view !== mine) return false;
  try {
    const links = await getJson(`/api/v1/tasks/${encodeURIComponent(mine.jobId)}/links`);
    return view === mine && useLinks(mine, links);
  } catch {
    mine.linkTimer = setTimeout(() => renewLinks(mine), 30_000);
    return false;
  }
}

/** The player failed: ask the server why (410 when the audio was not kept) and say so. */
async function explainAudio(mine) {
  const audio = $("player");
  let reason = "The audio could not be played.";
  try {
    const response = await fetch(audio.getAttribute("src"), { headers: { Range: "bytes=0-0" } });
    if (!response.ok) reason = `The audio cannot be played: ${await errorDetail(response)}`;
  } catch {
    // the server is unreachable: the generic words stay
  }
  if (view !== mine) return;
  audio.hidden = true;
  const box = $("t-audio-error");
  box.textContent = /[.!?]$/.test(reason) ? reason : `${reason}.`;
  box.hidden = false;
}

function renderSegments(mine) {
  const ol = $("segments");
  mine.rows = mine.segments.map((segment, index) => {
    const time = el("button", { class: "segment-time", type: "button", "aria-label": `Play from ${clock(segment.start)}`, text: clock(segment.start) });
    const text = el("p", { class: "segment-text" });
    const row = el("li", { class: "segment", "data-index": String(index) }, time, text);
    row._text = text;
    fillText(row, segment, "");
    return row;
  });
  if (!mine.rows.length) {
    ol.replaceChildren(el("li", { class: "segment" }, el("span"), el("p", { class: "muted", text: "No speech was found in this recording." })));
    return;
  }
  ol.replaceChildren(...mine.rows);
}

/** The segment's words as spans (for marking the current one), or its text with matches marked. */
function fillText(row, segment, query) {
  const target = row._text;
  if (query) {
    const pieces = String(segment.text || "").split(new RegExp(`(${escapeRegExp(query)})`, "gi"));
    target.replaceChildren(...pieces.map((piece, i) => (i % 2 ? el("mark", { text: piece }) : piece)));
    row._words = null;
    return pieces.length > 1;
  }
  if (Array.isArray(segment.words) && segment.words.length) {
    // Whisper's words carry their leading space: it goes between the spans, so that marking
    // the current word does not mark the space before it.
    row._words = segment.words.map((word) => el("span", { class: "word", text: String(word.word).trim() }));
    const nodes = [];
    segment.words.forEach((word, i) => {
      if (i && /^\s/.test(String(word.word))) nodes.push(" ");
      nodes.push(row._words[i]);
    });
    target.replaceChildren(...nodes);
  } else {
    row._words = null;
    target.textContent = String(segment.text || "").trim();
  }
  return false;
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Play from the segment's start, or from `at` (a word's start) within it. */
function playFrom(index, at) {
  const segment = view.segments[index];
  if (!segment) return;
  const audio = $("player");
  audio.currentTime = Number.isFinite(at) ? at : segment.start;
  const playing = audio.play();
  if (playing) playing.catch(() => {}); // no audio device, or the browser wants a gesture: seeking still worked
  setCurrent(index, { scroll: false });
}

function loop() {
  if (!view) return;
  cancelAnimationFrame(view.raf);
  const frame = () => {
    follow();
    if (view && !$("player").paused) view.raf = requestAnimationFrame(frame);
  };
  view.raf = requestAnimationFrame(frame);
}

function indexAt(time) {
  const segments = view.segments;
  let low = 0;
  let high = segments.length - 1;
  let found = -1;
  while (low <= high) {
    const mid = (low + high) >> 1;
    if (segments[mid].start <= time + 0.01) {
      found = mid;
      low = mid + 1;
    } else {
      high = mid - 1;
    }
  }
  return found;
}

function follow() {
  if (!view || !view.segments.length) return;
  const time = $("player").currentTime;
  setCurrent(indexAt(time), { scroll: true });
  markWord(time);
}

function setCurrent(index, { scroll }) {
  if (index === view.current) return;
  const before = view.rows[view.current];
  if (before) {
    before.classList.remove("current");
    before.removeAttribute("aria-current");
  }
  view.current = index;
  const row = view.rows[index];
  if (!row) return;
  row.classList.add("current");
  row.setAttribute("aria-current", "true");
  if (scroll && $("t-follow").checked) {
    const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    row.scrollIntoView({ block: "center", behavior: reduce ? "auto" : "smooth" });
  }
}

function markWord(time) {
  const row = view.rows[view.current];
  const words = view.segments[view.current]?.words;
  let now = null;
  if (row && row._words && Array.isArray(words)) {
    for (let i = 0; i < words.length; i++) {
      if (words[i].start <= time + 0.01) now = row._words[i];
      else break;
    }
  }
  if (now === view.word) return;
  view.word?.classList.remove("now");
  now?.classList.add("now");
  view.word = now;
}

function applySearch(raw, { keepPosition = false } = {}) {
  if (!view) return;
  const query = raw.trim();
  if (keepPosition && query === view.query) return;
  view.query = query;
  view.matches = [];
  view.matchAt = -1;
  view.word = null;
  view.rows.forEach((row, index) => {
    const hit = fillText(row, view.segments[index], query);
    row.classList.toggle("dimmed", Boolean(query) && !hit);
    if (hit) view.matches.push(...row.querySelectorAll("mark"));
  });
  const count = $("t-search-count");
  count.textContent = !query ? "" : view.matches.length ? `${view.matches.length} found` : "No matches";
  $("t-search-next").disabled = $("t-search-prev").disabled = !view.matches.length;
}

function step(direction) {
  if (!view || !view.matches.length) return;
  view.matches[view.matchAt]?.classList.remove("focused");
  view.matchAt = (view.matchAt + direction + view.matches.length) % view.matches.length;
  const mark = view.matches[view.matchAt];
  mark.classList.add("focused");
  mark.scrollIntoView({ block: "center" });
  $("t-search-count").textContent = `${view.matchAt + 1} of ${view.matches.length}`;
}

async function copyText() {
  if (!view) return;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(view.text);
    } else {
      // Plain http on a LAN address is not a secure context: the old way still works there.
      const area = el("textarea", { class: "visually-hidden", readonly: true });
      area.value = view.text;
      document.body.append(area);
      area.select();
      const copied = document.execCommand("copy");
      area.remove();
      if (!copied) throw new Error("the browser refused");
    }
    toast("Transcript copied to the clipboard");
  } catch (error) {
    toast(`Could not copy: ${error.message}`, { error: true });
  }
}
