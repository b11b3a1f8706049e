// Small helpers the views share: building elements, times, durations, states.
// Plain JavaScript modules, no build step: what is here is what the browser runs.

// h("td.state", {dataset: {state: "running"}}, "running") -> <td class="state" data-state="running">
export function h(tag, props, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      else if (key === "style") el.style.cssText = value; // CSSOM: allowed by the page's Content-Security-Policy
      else if (key in el && typeof value !== "string") el[key] = value;
      else el.setAttribute(key, value === true ? "" : value);
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// Times come from the API as ISO 8601 in UTC with a Z; the console shows them
// in UTC too, as the operators' runs are named by them.
export function shortTime(iso) {
  if (!iso) return "-";
  return iso.replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function seconds(iso) {
  return iso ? Date.parse(iso) / 1000 : null;
}

export function duration(secs) {
  if (secs === null || secs === undefined || Number.isNaN(secs)) return "-";
  if (secs < 60) return `${secs.toFixed(1)} s`;
  let m = Math.floor(secs / 60);
  const s = Math.floor(secs % 60);
  if (m < 60) return `${m} min ${s} s`;
  const hours = Math.floor(m / 60);
  m %= 60;
  if (hours < 48) return `${hours} h ${m} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

// How long a job ran (or has run so far)
export function jobDuration(job) {
  const start = seconds(job.started_at);
  if (start === null) return "-";
  const end = job.ended_at ? seconds(job.ended_at) : Date.now() / 1000;
  return duration(Math.max(0, end - start)) + (job.ended_at ? "" : " so far");
}

// Every job and run state has a colour AND its name in text (docs/console.md):
// the colour is for the eye, the word for everyone.
export const JOB_STATES = ["waiting", "held", "submitted", "running", "succeeded", "failed", "killed", "skipped", "expired",
  "bypassed"];
export const RUN_STATES = ["queued", "running", "succeeded", "failed", "expired"];

export function stateBadge(state, extra) {
  return h("span.state", { dataset: { state }, title: extra || state }, state);
}

export function count(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// Calls fn at most once per animation frame, with the latest arguments:
// a burst of events paints once.
export function perFrame(fn) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fn();
    });
  };
}

// Calls fn at most every `ms` milliseconds (the first call at once).
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    const wait = last + ms - Date.now();
    if (wait <= 0 && !timer) {
      last = Date.now();
      fn();
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn();
      }, Math.max(wait, 0));
    }
  };
}

// A standing order of an operator (a pause, a drain) in words: who, since
// when, why (daemon.status, docs/api.md).
export function order(o) {
  return `by ${o.by} since ${shortTime(o.since)}${o.reason ? `: ${o.reason}` : ""}`;
}

export function link(href, text) {
  return h("a", { href }, text);
}

export function errorBox(error) {
  return h("p.error", { role: "alert" }, String(error && error.message ? error.message : error));
}

export function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}
