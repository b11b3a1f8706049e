// The console's entry point: find the API (the page's <meta>, else
// /console.json), connect, ask for a token when the daemon wants one, and
// show the view the address names:
//
//   #/                      overview
//   #/runs?pipeline=&state=&reference=
//   #/run/17                a run's graph and jobs
//   #/job/40                a job, its log following live
//   #/index, #/index/arome  the Productstatus index, the requests for updates
//   #/events                the live event stream
//
// The first paint waits on one chain: this module, the websocket, the
// view's first answers. So this module imports only what connecting needs;
// the view's module loads while the websocket opens, and a view's first
// calls go out as one batch as soon as it is open, each view naming them
// here (`first`). The other views load after the first paint.
// bench/console.py measures the chain.

import { Api, isUnauthorized } from "./rpc.js";
import { clear, errorBox, h, order } from "./util.js";

const TOKEN_KEY = "muppet-token";

const routes = [
  { pattern: /^#?\/?$/, module: () => import("./overview.js"), name: "overview",
    first: () => [["daemon.status"], ["pipelines.status"]] },
  { pattern: /^#\/runs(\?.*)?$/, module: () => import("./runs.js"), name: "runsView" },
  { pattern: /^#\/run\/(\d+)$/, module: () => import("./run.js"), name: "runView",
    first: (match) => [["runs.get", { run_id: Number(match[1]) }], ["pipelines.list"]] },
  { pattern: /^#\/job\/(\d+)$/, module: () => import("./job.js"), name: "jobView" },
  { pattern: /^#\/index(?:\/([^/?]+))?(?:\/(\d+))?$/, module: () => import("./indexview.js"), name: "indexView" },
  { pattern: /^#\/events$/, module: () => import("./events.js"), name: "eventsView" },
];

let current = null; // { stop() } of the view shown
let shown = 0; // counts show() calls: a slow import must not show an old address

function consoleFacts() {
  const meta = document.querySelector('meta[name="muppet-console"]');
  if (meta) return Promise.resolve(JSON.parse(meta.content));
  return fetch("/console.json", { cache: "no-store" }).then((answer) => answer.json());
}

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

// The drain, on top of every page while it lasts (docs/cli.md, "muppet
// drain"), from daemon.status and then from the operator events.
const orders = {
  draining: null,
  button: null, // (daemon) => its buttons, once actions.js has loaded
  set(draining) {
    this.draining = draining;
    const box = document.getElementById("draining");
    box.hidden = !draining;
    if (!draining) {
      clear(box);
      return;
    }
    const undrain = this.button ? this.button({ draining }) : [];
    clear(box, h("span", null, h("strong", null, "Draining:"), " the daemon starts no new job; running ones finish"),
      h("span.who", null, `(${order(draining)})`), undrain);
  },
  // a daemon.status answer (the overview reads it anyway); while the
  // database is away it cannot say (its jobs are null), and the banner stays
  status(status) {
    if (status.jobs !== null) this.set(status.draining);
  },
  events(events) {
    for (const event of events) {
      if (event.kind !== "operator") continue;
      const d = event.data;
      if (d.action === "drain") this.set({ by: d.by, reason: d.reason, since: event.at });
      else if (d.action === "undrain") this.set(null);
    }
  },
};

function routeOf(hash) {
  for (const route of routes) {
    const match = hash.match(route.pattern);
    if (match) return [route, match];
  }
  return [null, null];
}

// Show the view the address names; resolves once its first calls are
// answered (at once for a view without them), rejects when they fail.
async function show(api) {
  const mine = ++shown;
  if (current) current.stop();
  current = null;
  const main = document.getElementById("view");
  const hash = location.hash || "#/";
  const [route, match] = routeOf(hash);
  if (!route) {
    clear(main, errorBox(`no such page: ${hash}`));
    return;
  }
  // the view's first calls leave now, while its module loads
  const first = route.first ? sendFirst(api, route.first(match)) : null;
  let module;
  try {
    module = await route.module();
  } catch (error) {
    if (first) first.take();
    if (mine === shown) clear(main, errorBox(error));
    return;
  }
  if (mine !== shown) {
    if (first) first.take(); // another address was asked for meanwhile
    return;
  }
  clear(main);
  main.removeAttribute("data-ready");
  for (const a of document.querySelectorAll("nav a")) {
    const href = a.getAttribute("href");
    a.classList.toggle("current", href === "#/" ? route.name === "overview" : hash.startsWith(href));
  }
  current = module[route.name](main, api, match, { flash, first, orders });
  if (!first) return null;
  first.take();
  return first.answer;
}

// A view's first calls, as one batch, and the events that come while it
// loads: `answer` is the Promise of the batch's results, `take()` gives the
// events seen since it left (and stops keeping them). A view whose answer
// may be older than an event it has seen applies them again on top of it.
function sendFirst(api, calls) {
  const seen = [];
  const off = api.onEvents((events) => seen.push(...events));
  const answer = api.batch(calls);
  answer.catch(() => {}); // the view shows the error
  return { answer, take() { off(); return seen.splice(0); } };
}

async function boot() {
  const info = await consoleFacts();
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
  // the view's module and the actions load while the websocket opens
  const [route] = routeOf(location.hash || "#/");
  if (route) route.module().catch(() => {});
  const actions = import("./actions.js");
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
  const shownFirst = show(api);
  // the other views, for the next click, once this one is shown: not in the
  // first paint's way (each is a request and a compile on a busy machine)
  shownFirst.catch(() => {}).then(() => setTimeout(() => routes.forEach((r) => r.module().catch(() => {})), 500));
  api.onEvents((events) => orders.events(events));
  const { actionButtons } = await actions;
  orders.button = (daemon) => actionButtons(api, "daemon", daemon, flash);
  if (orders.draining) orders.set(orders.draining);
  // the overview reads daemon.status itself; the other pages ask once,
  // after their own first calls, which the first paint waits on
  if (route && route.name !== "overview") {
    await shownFirst.catch(() => {}); // the view shows the error
    api.call("daemon.status").then((s) => orders.status(s), () => {});
  }
}

boot().catch((error) => clear(document.getElementById("view"), errorBox(error)));
