// The live event stream: the last 200 events of the log, then each new one
// as it is committed, newest on top (at most 500 on the page). An operator's
// action reads as a sentence: who did what, and why (docs/api.md, "Operator
// events").

import { clear, errorBox, h, link, shortTime } from "./util.js";

const SHOWN = 500;

const DONE = { trigger: "triggered", backfill: "backfilled", hold: "held", release: "released", kill: "killed",
  rerun: "reran", set: "set", bypass: "bypassed", pause: "paused", resume: "resumed", drain: "drained",
  undrain: "undrained", request: "requested", reload: "reloaded" };

const runLink = (id) => link(`#/run/${id}`, `run ${id}`);
const jobLink = (id) => link(`#/job/${id}`, `job ${id}`);

function ids(list, make) {
  const shown = list.slice(0, 5).flatMap((id, i) => (i ? [", ", make(id)] : [make(id)]));
  return list.length > 5 ? [...shown, ` and ${list.length - 5} more`] : shown;
}

// What an operator's action touched, in words
function operated(d) {
  const t = d.target || {};
  const jobs = t.job_ids || [];
  switch (d.action) {
    case "trigger": return [runLink(t.run_id), ` of ${t.pipeline} for ${shortTime(t.reference_time)}`];
    case "backfill": return [`${t.pipeline} from ${shortTime(t.from)} to ${shortTime(t.to)}: ${t.runs} runs`];
    case "pause": case "resume":
      return [`pipeline ${t.pipeline}`, (t.expired_run_ids || []).length
        ? [" (its catch-up expired ", ids(t.expired_run_ids, runLink), ")"] : ""];
    case "drain": return ["the daemon: no new job starts"];
    case "undrain": return ["the daemon: jobs start again"];
    case "request": return [`an update of ${t.product} for ${shortTime(t.reference_time)} (request ${t.request_id}, `
      + `pipeline ${t.pipeline})`];
    case "bypass": return [`step ${t.step} of `, runLink(t.run_id), ` (${jobs.length} job${jobs.length === 1 ? "" : "s"})`];
    default: break;
  }
  if (t.job_id !== undefined) {
    const made = t.new_job_id ? [" as ", jobLink(t.new_job_id)] : [];
    const outcome = d.action === "set" ? ` ${t.outcome}` : "";
    return [jobLink(t.job_id), ` of `, runLink(t.run_id), outcome, made];
  }
  if (t.run_id !== undefined) {
    // a whole run: the jobs it touched, and the new ones of a rerun
    const fresh = t.new_job_ids ? [" as ", ids(t.new_job_ids, jobLink)] : [];
    return [runLink(t.run_id), jobs.length ? [" (", ids(jobs, jobLink), fresh, ")"] : ""];
  }
  return [Object.keys(t).length ? JSON.stringify(t) : ""];
}

export function describeOperator(d) {
  return [h("b.who", null, d.by), ` ${DONE[d.action] || d.action} `, operated(d),
    d.reason ? [": ", h("q.why", null, d.reason)] : h("span.note", null, " (no reason given)")];
}

function describe(event) {
  const d = event.data;
  switch (event.kind) {
    case "run": return [link(`#/run/${d.id}`, `run ${d.id}`), ` ${d.pipeline} ${shortTime(d.reference_time)} ${d.state}`];
    case "job": return [link(`#/job/${d.id}`, `job ${d.id}`), ` ${d.pipeline}.${d.step}[${d.index}] ${d.state}${d.reason ? ` (${d.reason})` : ""}`];
    case "instance": return [`instance ${d.id} ${d.product} ${shortTime(d.reference_time)} v${d.version}${d.completed_at ? " complete" : ""}`];
    case "file": return [`file ${d.id} ${d.backend} ${d.url}${d.deleted ? " deleted" : ""}`];
    case "operator": return describeOperator(d);
    case "late": return [`${d.kind} `, d.kind === "run" ? runLink(d.id) : jobLink(d.id),
      ` ${d.pipeline}${d.kind === "job" ? `.${d.step}[${d.index}]` : ""} ${shortTime(d.reference_time)} is late`];
    default: return [`${event.kind} ${d.slug || d.id || ""}`];
  }
}

export function eventsView(main, api) {
  let stopped = false;
  const list = h("ol.events", { reversed: true });
  const problem = h("div");
  clear(main, h("h2", null, "Events"), problem, list);

  function row(event) {
    return h("li", { dataset: { eventId: event.id, kind: event.kind } },
      h("span.num", null, String(event.id)), " ", h("span.when", null, shortTime(event.at)), " ",
      h("span.kind", null, event.kind), " ", describe(event));
  }

  function add(events) {
    for (const event of events) list.prepend(row(event));
    while (list.children.length > SHOWN) list.lastElementChild.remove();
  }

  const buffer = [];
  let loaded = false;
  const off = api.onEvents((events) => (loaded ? add(events) : buffer.push(...events)));

  (async () => {
    try {
      await api.connect();
      const since = Math.max(0, (api.position ?? 0) - 200);
      const past = await api.call("events.list", { since, limit: 200 });
      if (stopped) return;
      const last = past.length ? past[past.length - 1].id : since;
      add(past);
      add(buffer.filter((e) => e.id > last));
      loaded = true;
      main.dataset.ready = "events";
    } catch (error) {
      if (!stopped) clear(problem, errorBox(error));
    }
  })();
  return { stop() { stopped = true; off(); } };
}
