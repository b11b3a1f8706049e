// The runs: filtered by pipeline, state and reference time (a day, or one
// time), a page of 50 at a time, newest first (runs.search). A run event
// updates its row in place; a new run brings the first page back.

import { clear, errorBox, h, link, RUN_STATES, seconds, duration, shortTime, stateBadge, throttle } from "./util.js";

const PAGE = 50;

// "2026-11-28" -> that day; "2026-11-28T06" or a full time -> that time
function window_(text) {
  const value = text.trim();
  if (!value) return {};
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) {
    const begin = new Date(`${value}T00:00:00Z`);
    const end = new Date(begin.getTime() + 86400000);
    return { begin: begin.toISOString(), end: end.toISOString() };
  }
  const at = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`);
  if (Number.isNaN(at.getTime())) throw new Error(`not a time: ${value} (give 2026-11-28 or 2026-11-28T06:00Z)`);
  return { begin: at.toISOString(), end: new Date(at.getTime() + 1000).toISOString() };
}

export function runsView(main, api, match) {
  const query = new URLSearchParams((match[1] || "").slice(1));
  const filters = { pipeline: query.get("pipeline") || "", state: query.get("state") || "", reference: query.get("reference") || "" };
  const pipelineSelect = h("select", { name: "pipeline" }, h("option", { value: "" }, "every pipeline"));
  const stateSelect = h("select", { name: "state" }, h("option", { value: "" }, "every state"),
    RUN_STATES.map((s) => h("option", { value: s, selected: s === filters.state }, s)));
  const reference = h("input", { name: "reference", placeholder: "2026-11-28 or 2026-11-28T06:00Z", value: filters.reference, size: 28 });
  const form = h("form.filters", {
    on: {
      submit: (event) => {
        event.preventDefault();
        const q = new URLSearchParams();
        if (pipelineSelect.value) q.set("pipeline", pipelineSelect.value);
        if (stateSelect.value) q.set("state", stateSelect.value);
        if (reference.value.trim()) q.set("reference", reference.value.trim());
        location.hash = `#/runs?${q}`;
      },
    },
  }, h("label", null, "pipeline ", pipelineSelect), h("label", null, "state ", stateSelect),
  h("label", null, "reference time ", reference), h("button", { type: "submit" }, "Show"));
  const body = h("tbody");
  const pager = h("p.pager");
  const problem = h("div");
  clear(main, h("h2", null, "Runs"), form, problem,
    h("table.runs", null, h("thead", null, h("tr", null, ["run", "pipeline", "reference time", "state", "cause", "created", "ended", "took"]
      .map((t) => h("th", null, t)))), body), pager);
  let stopped = false;
  const pages = [null]; // before_id of each page shown so far
  let page = 0;
  let shown = new Map();

  api.call("pipelines.list").then((list) => {
    for (const p of list) pipelineSelect.append(h("option", { value: p.name, selected: p.name === filters.pipeline }, p.name));
  }, () => {});

  function row(run) {
    const took = run.ended_at ? duration(seconds(run.ended_at) - seconds(run.created_at)) : "-";
    return h("tr", { dataset: { runId: run.id, state: run.state } },
      h("td", null, link(`#/run/${run.id}`, String(run.id))), h("td", null, run.pipeline),
      h("td", null, shortTime(run.reference_time)), h("td", null, stateBadge(run.state), run.late ? h("span.late", null, " late") : null),
      h("td", null, run.cause), h("td", null, shortTime(run.created_at)), h("td", null, shortTime(run.ended_at)), h("td", null, took));
  }

  async function load() {
    let params;
    try {
      params = { pipeline: filters.pipeline || null, state: filters.state || null, ...window_(filters.reference),
        before_id: pages[page], limit: PAGE };
    } catch (error) {
      clear(problem, errorBox(error));
      return;
    }
    try {
      const runs = await api.call("runs.search", params);
      if (stopped) return;
      clear(problem);
      shown = new Map(runs.map((r) => [r.id, r]));
      clear(body, runs.length ? runs.map(row) : h("tr", null, h("td", { colspan: 8 }, "no runs")));
      const older = h("button", { type: "button", disabled: runs.length < PAGE, on: { click: () => {
        pages[page + 1] = runs[runs.length - 1].id; page += 1; load();
      } } }, "Older");
      const newer = h("button", { type: "button", disabled: page === 0, on: { click: () => { page -= 1; load(); } } }, "Newer");
      clear(pager, newer, ` page ${page + 1} `, older);
      main.dataset.ready = "runs";
    } catch (error) {
      if (!stopped) clear(problem, errorBox(error));
    }
  }

  const reloadFirst = throttle(() => { if (page === 0) load(); }, 500);
  const off = api.onEvents((events) => {
    for (const event of events) {
      if (event.kind !== "run") continue;
      const run = event.data;
      if (shown.has(run.id)) {
        shown.set(run.id, run);
        const old = body.querySelector(`tr[data-run-id="${run.id}"]`);
        if (old) old.replaceWith(row(run));
      } else if (!filters.pipeline || run.pipeline === filters.pipeline) {
        reloadFirst();
      }
    }
  });
  load();
  return { stop() { stopped = true; off(); } };
}
