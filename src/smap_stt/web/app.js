// The page: two views chosen by the URL hash (#/ and #/jobs/ID), so links and Back work.

import { askForKey, AuthCancelled, currentKey, getJson, onKeyChange } from "./api.js";
import { pauseJobs, refreshJobs, resumeJobs, startJobs } from "./jobs.js";
import { setUpOptions } from "./options.js";
import { closeTranscript, openTranscript, setUpTranscript } from "./transcript.js";
import { setUpUpload } from "./upload.js";
import { poller } from "./util.js";

function route() {
  const match = location.hash.match(/^#\/jobs\/([^/?#]+)/);
  const jobs = document.getElementById("view-jobs");
  const transcript = document.getElementById("view-transcript");
  if (match) {
    pauseJobs();
    jobs.hidden = true;
    transcript.hidden = false;
    openTranscript(decodeURIComponent(match[1]));
    document.getElementById("main").focus({ preventScroll: true });
    window.scrollTo(0, 0);
  } else {
    closeTranscript();
    document.title = "smap-stt · speech to text";
    transcript.hidden = true;
    jobs.hidden = false;
    resumeJobs();
  }
}

async function checkHealth() {
  const box = document.getElementById("health");
  const text = box.querySelector(".health-text");
  try {
    const body = await getJson("/api/v1/tasks/health");
    box.dataset.state = body.status === "healthy" ? "healthy" : "unhealthy";
    text.textContent = body.status === "healthy" ? "Service healthy" : unhealthyText(body);
  } catch (error) {
    if (error instanceof AuthCancelled) return;
    if (error.status === 503 && error.message) {
      box.dataset.state = "unhealthy";
      text.textContent = "Service degraded";
    } else {
      box.dataset.state = "unhealthy";
      text.textContent = error.status ? "Service degraded" : "Server unreachable";
    }
  }
  box.title = text.textContent;
}

function unhealthyText(body) {
  const down = Object.entries(body.services || {})
    .filter(([, value]) => value !== "healthy")
    .map(([name]) => name);
  return down.length ? `Unavailable: ${down.join(", ")}` : "Service degraded";
}

function showKeyButton() {
  document.getElementById("key-button").hidden = !currentKey();
}

async function askFromButton() {
  try {
    await askForKey("", { force: true });
    document.getElementById("auth-banner").hidden = true;
    refreshJobs();
    checkHealth();
  } catch {
    // closed again
  }
}

function main() {
  setUpUpload();
  setUpTranscript();
  startJobs();
  setUpOptions();
  showKeyButton();
  onKeyChange(showKeyButton);
  document.getElementById("key-button").addEventListener("click", askFromButton);
  document.getElementById("auth-banner-button").addEventListener("click", askFromButton);
  window.addEventListener("hashchange", route);
  route();
  poller(checkHealth, 15000);
}

main();
