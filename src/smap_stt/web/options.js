// The upload options: languages, models from the API, priority; choices remembered per browser.

import { getJson } from "./api.js";
import { el } from "./util.js";
import { LANGUAGES } from "./languages.js";

const STORE = "smap-stt.options";
const NAMES = new Map(LANGUAGES);

export function languageName(code) {
  return NAMES.get(code) || code;
}

function remembered() {
  try {
    return JSON.parse(localStorage.getItem(STORE) || "{}");
  } catch {
    return {};
  }
}

function remember() {
  try {
    localStorage.setItem(STORE, JSON.stringify(currentOptions()));
  } catch {
    // not kept: fine
  }
}

export function currentOptions() {
  return {
    language: document.getElementById("opt-language").value,
    model: document.getElementById("opt-model").value,
    task: document.getElementById("opt-task").value,
    priority: document.getElementById("opt-priority").value,
    words: document.getElementById("opt-words").checked,
  };
}

/** The form fields for an upload: only what differs from the server's defaults is sent. */
export function uploadFields() {
  const options = currentOptions();
  const fields = { language: options.language, priority: options.priority };
  if (options.model) fields.model = options.model;
  if (options.task !== "transcribe") fields.task = options.task;
  if (options.words) fields.word_timestamps = "true";
  return fields;
}

export async function setUpOptions() {
  const saved = remembered();
  const language = document.getElementById("opt-language");
  language.append(el("option", { value: "auto", text: "Auto-detect" }));
  for (const [code, name] of LANGUAGES) language.append(el("option", { value: code, text: name }));
  language.value = NAMES.has(saved.language) || saved.language === "auto" ? saved.language : "auto";

  const priority = document.getElementById("opt-priority");
  for (let value = 10; value >= 0; value--) {
    const label = value === 10 ? "10 · highest" : value === 5 ? "5 · normal" : value === 0 ? "0 · lowest" : String(value);
    priority.append(el("option", { value: String(value), text: label }));
  }
  priority.value = /^(10|[0-9])$/.test(saved.priority || "") ? saved.priority : "5";

  const task = document.getElementById("opt-task");
  if (saved.task === "translate") task.value = "translate";
  document.getElementById("opt-words").checked = Boolean(saved.words);

  for (const id of ["opt-language", "opt-model", "opt-task", "opt-priority", "opt-words"]) {
    document.getElementById(id).addEventListener("change", remember);
  }
  await loadModels(saved.model || "");
}

/** The installed models, from the OpenAI-style `GET /v1/models`; without it, the default. */
async function loadModels(savedModel) {
  const select = document.getElementById("opt-model");
  let models = [];
  try {
    const body = await getJson("/v1/models");
    models = (body.data || []).map((model) => model.id).filter(Boolean);
  } catch {
    return; // "Server default" stays the only choice
  }
  for (const id of models) select.append(el("option", { value: id, text: id }));
  if (models.includes(savedModel)) select.value = savedModel;
}
