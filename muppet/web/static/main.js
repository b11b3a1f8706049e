// The console's entry point: find the API (/console.json), connect, ask for a
// token when the daemon wants one, and show the view the address names:
//
//   #/                      overview
//   #/runs?pipeline=&state=&reference=
//   #/run/17                a run's graph and jobs
//   #/job/40                a job, its log following live
//   #/index, #/index/arome  the Productstatus index
//   #/events                the live event stream

import { Api, isUnauthorized } from "./rpc.js";
import { clear, errorBox, h } from "./util.js";
import { overview } from "./overview.js";
import { runsView } from "./runs.js";
import { runView } from "./run.js";
import { jobView } from "./job.js";
import { indexView } from "./indexview.js";
import { eventsView } from "./events.js";

const TOKEN_KEY = "muppet-token";

const routes = [
  [/^#?\/?$/, overview],
  [/^#\/runs(\?.*)?$/, runsView],
  [/^#\/run\/(\d+)$/, runView],
  [/^#\/job\/(\d+)$/, jobView],
  [/^#\/index(?:\/([^/?]+))?(?:\/(\d+))?$/, indexView],
  [/^#\/events$/, eventsView],
];

let current = null; // { stop() } of the view shown

function apiUrl(info) {
  const { scheme, host, port } = info.api;
  const where = host && host !== "localhost" ? host : location.hostname;
  return `${scheme}://${where.includes(":") ? `[${where}]` : where}:${port}`;
}

function flash(message, failed) {
  const box = document.getElementById("flash");
  clear(box, h(failed ? "p.error" : "p.note", { role: "status" }, message));
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

async function askToken(api, info) {
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("input");
  const problem = dialog.querySelector(".problem");
  const skip = dialog.querySelector("[data-skip]");
  skip.hidden = !info.open_reads;
  for (;;) {
    const answer = await new Promise((resolve) => {
      dialog.onclose = () => resolve(dialog.returnValue);
      dialog.showModal();
      input.focus();
    });
    if (answer === "skip") return;
    try {
      await api.authenticate(input.value.trim());
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      return;
    } catch (error) {
      problem.textContent = error.message;
    }
  }
}

function show(api) {
  if (current) current.stop();
  const main = document.getElementById("view");
  const hash = location.hash || "#/";
  for (const [pattern, view] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    clear(main);
    main.removeAttribute("data-ready");
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("current", hash.startsWith(a.getAttribute("href")) && a.getAttribute("href") !== "#/"
        || (a.getAttribute("href") === "#/" && view === overview));
    }
    current = view(main, api, match, { flash });
    return;
  }
  clear(main, errorBox(`no such page: ${hash}`));
}

async function boot() {
  const info = await (await fetch("/console.json", { cache: "no-store" })).json();
  document.getElementById("version").textContent = `muppet ${info.version}`;
  const api = new Api(apiUrl(info));
  const status = document.getElementById("connection");
  api.onState((state, detail) => {
    status.dataset.state = state;
    status.textContent = state === "live" ? "live" : state === "connecting" ? "connecting…" : `reconnecting… ${detail || ""}`;
  });
  if (!info.tokens) api.role = "admin";
  else {
    const kept = sessionStorage.getItem(TOKEN_KEY);
    if (kept) api.token = kept;
  }
  try {
    await api.connect();
  } catch (error) {
    if (isUnauthorized(error)) {
      api.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      api.opened = null;
    } else {
      clear(document.getElementById("view"), errorBox(error));
    }
  }
  if (info.tokens && !api.token) await askToken(api, info);
  const who = document.getElementById("who");
  who.textContent = info.tokens ? (api.role ? `role: ${api.role}` : "read only") : "";
  document.getElementById("forget").hidden = !info.tokens;
  document.getElementById("forget").onclick = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  };
  window.addEventListener("hashchange", () => show(api));
  show(api);
}

boot().catch((error) => clear(document.getElementById("view"), errorBox(error)));
