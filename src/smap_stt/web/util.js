// Small helpers: building elements, formatting times and sizes, announcing to screen readers.

/** el("div", {class: "x", text: "hi"}, child, ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** 75.3 → "1:15"; 3725 → "1:02:05". */
export function clock(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const total = Math.max(0, Math.floor(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** A length of time in words: "12 s", "3 min", "1 h 20 min". */
export function span(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  const h = Math.floor(seconds / 3600);
  const m = Math.round((seconds % 3600) / 60);
  return m ? `${h} h ${m} min` : `${h} h`;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

/** "2 minutes ago", or a date for anything older than a week. */
export function ago(iso) {
  const then = new Date(iso);
  if (Number.isNaN(then.getTime())) return "";
  const seconds = (then.getTime() - Date.now()) / 1000;
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (abs < 3600) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(seconds / 3600), "hour");
  if (abs < 7 * 86400) return relative.format(Math.round(seconds / 86400), "day");
  return then.toLocaleDateString();
}

export function bytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(0)} KB`;
  if (size < 1024 ** 3) return `${(size / 1024 / 1024).toFixed(1)} MB`;
  return `${(size / 1024 ** 3).toFixed(2)} GB`;
}

export function ordinal(n) {
  const rules = new Intl.PluralRules("en", { type: "ordinal" });
  const suffix = { one: "st", two: "nd", few: "rd", other: "th" }[rules.select(n)];
  return `${n}${suffix}`;
}

export const STATUS_LABELS = {
  PENDING: "Waiting",
  PROCESSING: "Running",
  COMPLETED: "Completed",
  FAILED: "Failed",
  CANCELLED: "Cancelled",
};

export const FINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/** Set a progress bar (a .bar with role=progressbar) to `percent`, or indeterminate for null. */
export function setBar(bar, percent) {
  if (percent === null || percent === undefined) {
    bar.classList.add("indeterminate");
    bar.removeAttribute("aria-valuenow");
    bar.style.setProperty("--value", "0%");
    return;
  }
  const value = Math.max(0, Math.min(100, percent));
  bar.classList.remove("indeterminate");
  bar.style.setProperty("--value", `${value}%`);
  bar.setAttribute("aria-valuenow", String(Math.round(value)));
}

export function makeBar(label) {
  return el(
    "div",
    { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": "100" },
    el("span"),
  );
}

/** Say something to screen readers (the polite live region). */
export function announce(message) {
  const live = document.getElementById("live");
  live.textContent = "";
  // A new text node after a tick, so that the same words twice are announced twice.
  setTimeout(() => {
    live.textContent = message;
  }, 50);
}

export function toast(message, { error = false, seconds = 5 } = {}) {
  const box = document.getElementById("toasts");
  const item = el("div", { class: error ? "toast error" : "toast", role: error ? "alert" : "status", text: message });
  box.append(item);
  setTimeout(() => item.remove(), seconds * 1000);
}

/** Run `tick` every `ms` while the tab is visible; returns {stop, now} (now: run at once). */
export function poller(tick, ms) {
  let timer = null;
  let running = false;
  let stopped = false;
  let again = false; // asked for while a tick was running: run once more right after it
  const schedule = () => {
    clearTimeout(timer);
    if (!stopped && document.visibilityState === "visible") timer = setTimeout(run, ms);
  };
  const run = async () => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await tick();
    } catch (error) {
      console.error(error);
    } finally {
      running = false;
      if (again) {
        again = false;
        run();
      } else {
        schedule();
      }
    }
  };
  const onVisibility = () => {
    if (document.visibilityState === "visible") run();
    else clearTimeout(timer);
  };
  document.addEventListener("visibilitychange", onVisibility);
  run();
  return {
    now: run,
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    },
  };
}
