// Talking to the API: one place adds the key, and asks for it (once) when a request answers 401.

const KEY_STORE = "smap-stt.api-key";

export class AuthCancelled extends Error {
  constructor() {
    super("An API key is needed");
  }
}

/** An error the server explained: `message` is its `detail`, `status` the HTTP status. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function savedKey() {
  try {
    return localStorage.getItem(KEY_STORE) || "";
  } catch {
    return "";
  }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
  } catch {
    // Storage refused (private mode): the key lives for this page only.
  }
  memoryKey = key;
  keyListeners.forEach((listener) => listener(key));
}

let memoryKey = savedKey();
let pendingAsk = null; // one dialog for every request that met a 401 at the same time
let declined = false;
const keyListeners = [];

export function onKeyChange(listener) {
  keyListeners.push(listener);
}

export function currentKey() {
  return memoryKey;
}

export function forgetKey() {
  storeKey("");
}

function authHeaders() {
  return memoryKey ? { Authorization: `Bearer ${memoryKey}` } : {};
}

/** The server's explanation of an error response, in words for the user. */
export async function errorDetail(response) {
  const fallback = `The server answered ${response.status} ${response.statusText || ""}`.trim();
  try {
    const text = await response.text();
    return detailFromText(text) || fallback;
  } catch {
    return fallback;
  }
}

export function detailFromText(text) {
  try {
    const body = JSON.parse(text);
    if (typeof body.detail === "string") return body.detail;
    if (body.error && typeof body.error.message === "string") return body.error.message;
    if (Array.isArray(body.detail)) return body.detail.map((item) => item.msg || String(item)).join("; ");
  } catch {
    // not JSON
  }
  return "";
}

/**
 * Ask for a key in the dialog. `problem`: why the last one failed (shown in the dialog).
 * Resolves when a key was saved; rejects with AuthCancelled when the user closes the dialog.
 * `force`: ask even if the user declined before (they pressed a button to do so).
 */
export function askForKey(problem = "", { force = false } = {}) {
  if (pendingAsk) return pendingAsk;
  if (declined && !force) return Promise.reject(new AuthCancelled());
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  const cancel = document.getElementById("key-cancel");
  const forget = document.getElementById("key-forget");
  error.hidden = !problem;
  error.textContent = problem;
  forget.hidden = !memoryKey;
  input.value = "";
  pendingAsk = new Promise((resolve, reject) => {
    const finish = (saved) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      forget.removeEventListener("click", onForget);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      pendingAsk = null;
      if (saved) {
        declined = false;
        resolve();
      } else {
        declined = true;
        reject(new AuthCancelled());
      }
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      storeKey(key);
      finish(true);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    const onForget = () => {
      storeKey("");
      forget.hidden = true;
      input.focus();
    };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    forget.addEventListener("click", onForget);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return pendingAsk;
}

async function problemWith(response, sentKey) {
  const detail = await errorDetail(response);
  return sentKey ? `That key was not accepted: ${detail}` : "";
}

/** fetch() with the key; a 401 asks for a key and tries again. Resolves to the Response. */
export async function request(path, options = {}) {
  for (;;) {
    const sentKey = memoryKey;
    const response = await fetch(path, {
      ...options,
      headers: { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) },
    });
    if (response.status !== 401) return response;
    await askForKey(await problemWith(response, sentKey));
  }
}

/** A JSON answer, or ApiError with the server's detail. */
export async function getJson(path, options = {}) {
  const response = await request(path, options);
  if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
  return response.json();
}

/**
 * Upload one file with XMLHttpRequest (fetch cannot report upload progress).
 * `onProgress(fraction)`; resolves to {status, body} whatever the status, except 401,
 * which asks for a key and sends the file again.
 */
export async function upload(file, fields, onProgress) {
  for (;;) {
    const sentKey = memoryKey;
    const result = await new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/v1/tasks/upload");
      xhr.setRequestHeader("Accept", "application/json");
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      });
      xhr.addEventListener("load", () => resolve({ status: xhr.status, text: xhr.responseText }));
      xhr.addEventListener("error", () => reject(new ApiError(0, "The upload was interrupted: the server could not be reached")));
      xhr.addEventListener("abort", () => reject(new ApiError(0, "The upload was stopped")));
      const form = new FormData();
      for (const [name, value] of Object.entries(fields)) form.append(name, value);
      form.append("file", file, file.name);
      xhr.send(form);
    });
    if (result.status !== 401) return result;
    const detail = detailFromText(result.text) || "401 Unauthorized";
    await askForKey(sentKey ? `That key was not accepted: ${detail}` : "");
    onProgress(0);
  }
}
