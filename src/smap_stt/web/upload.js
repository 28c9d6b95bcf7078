// Drop zone and file picker: each file gets a row with its upload progress, then its job or
// the server's reason for refusing it. Files go up one at a time, in the order given.

import { AuthCancelled, detailFromText, upload } from "./api.js";
import { announce, bytes, el, makeBar, setBar } from "./util.js";
import { uploadFields } from "./options.js";
import { refreshJobs } from "./jobs.js";

const queue = [];
let busy = false;

export function setUpUpload() {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // the same file can be picked again
  });
  zone.addEventListener("click", (event) => {
    if (event.target === zone || !event.target.closest("label, input")) input.click();
  });
  let depth = 0; // dragenter/dragleave fire for every child element
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragging");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
  // A file dropped anywhere else would make the browser open it and leave the page.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (!zone.contains(event.target)) event.preventDefault();
    });
  }
}

function addFiles(files) {
  const list = document.getElementById("uploads");
  const fields = uploadFields(); // the options as they are when the files were chosen
  for (const file of files) {
    const item = makeItem(file);
    list.prepend(item.row);
    queue.push({ file, fields, item });
  }
  if (files.length) announce(files.length === 1 ? `Uploading ${files[0].name}` : `Uploading ${files.length} files`);
  pump();
}

function makeItem(file) {
  const name = el("span", { class: "upload-name", text: file.name, title: file.name });
  const stateText = el("span", { class: "upload-state", text: "Waiting to upload" });
  const bar = makeBar(`Upload of ${file.name}`);
  setBar(bar, 0);
  const side = el("span", { class: "upload-side" }, stateText);
  const row = el("li", { class: "upload", "data-state": "waiting" }, name, side, bar);
  return { row, name, stateText, side, bar };
}

async function pump() {
  if (busy) return;
  busy = true;
  try {
    while (queue.length) {
      const next = queue.shift();
      await send(next);
    }
  } finally {
    busy = false;
  }
}

async function send({ file, fields, item }) {
  item.row.dataset.state = "uploading";
  item.stateText.textContent = `0 % of ${bytes(file.size)}`;
  let result;
  try {
    result = await upload(file, fields, (fraction) => {
      setBar(item.bar, fraction * 100);
      item.stateText.textContent = fraction >= 1 ? "Checking the file…" : `${Math.floor(fraction * 100)} % of ${bytes(file.size)}`;
    });
  } catch (error) {
    refuse(item, error instanceof AuthCancelled ? "Not uploaded: an API key is needed" : error.message);
    return;
  }
  if (result.status === 201) {
    let body = {};
    try {
      body = JSON.parse(result.text);
    } catch {
      // accepted all the same
    }
    setBar(item.bar, 100);
    item.row.dataset.state = "done";
    item.stateText.replaceChildren(
      "Queued · ",
      el("a", { href: `#/jobs/${encodeURIComponent(body.job_id || "")}`, text: "open" }),
    );
    announce(`${file.name} uploaded and queued`);
    refreshJobs();
    setTimeout(() => item.row.remove(), 6000);
    return;
  }
  refuse(item, detailFromText(result.text) || `The server answered ${result.status}`);
}

function refuse(item, reason) {
  item.row.dataset.state = "refused";
  item.bar.remove();
  item.stateText.textContent = "Refused";
  item.side.append(
    el("button", {
      class: "btn btn-ghost btn-small",
      type: "button",
      text: "Dismiss",
      "aria-label": `Dismiss ${item.name.textContent}`,
      onclick: () => item.row.remove(),
    }),
  );
  item.row.append(el("p", { class: "upload-error", role: "alert", text: reason }));
}
