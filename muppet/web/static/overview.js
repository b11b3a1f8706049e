// The overview: the daemon's health and its drain, then every pipeline with
// its runs and jobs by state, its next firing and its pause, those that need
// attention (late, failed) first. It reads daemon.status and
// pipelines.status, and reads them again (at most every 300 ms) whenever a
// run, job or operator event comes.

import { actionButtons } from "./actions.js";
import { clear, count, duration, errorBox, h, JOB_STATES, link, order, shortTime, stateBadge, throttle } from "./util.js";

export function overview(main, api, match, { flash, first, orders }) {
  const health = h("section.health", { "aria-label": "daemon" });
  const attention = h("section.attention", { "aria-label": "needs attention" });
  const table = h("section.pipelines", { "aria-label": "pipelines" });
  clear(main, h("h2", null, "Overview"), health, attention, table);
  let stopped = false;

  // the calls main.js sent while this module loaded (every read here is whole:
  // an event seen meanwhile needs no care)
  let firstAnswer = first ? first.answer : null;
  async function load() {
    try {
      const answer = firstAnswer || api.batch([["daemon.status"], ["pipelines.status"]]);
      firstAnswer = null;
      const [status, pipelines] = await answer;
      if (stopped) return;
      orders.status(status);
      render(status, pipelines);
      main.dataset.ready = "overview";
    } catch (error) {
      if (!stopped) clear(health, errorBox(error));
    }
  }

  function render(status, pipelines) {
    const db = status.database;
    clear(health, h("dl.facts", null,
      h("dt", null, "database"),
      h("dd", { dataset: { ok: String(db.available) } },
        db.available ? `${db.name}: available` : `${db.name}: UNAVAILABLE for ${duration(db.outage_seconds)}: ${db.cause}`),
      h("dt", null, "executors"),
      h("dd", null, status.executors.map((e) => `${e.name} ${e.used ?? "?"} of ${e.max} slots used`).join(", ")),
      h("dt", null, "jobs of runs still going"),
      h("dd", null, status.jobs === null ? "unknown while the database is away"
        : Object.entries(status.jobs).map(([state, n]) => `${n} ${state}`).join(", ") || "none"),
      h("dt", null, "uptime"),
      h("dd", null, `${duration(status.uptime_seconds)} (since ${shortTime(status.started_at)})`),
      h("dt", null, "starting jobs"),
      h("dd", { dataset: { draining: String(Boolean(status.draining)) } },
        status.jobs === null ? "unknown while the database is away"
          : status.draining ? `no: draining, ${order(status.draining)} ` : "yes ",
        status.jobs === null ? null : actionButtons(api, "daemon", { draining: status.draining },
          (message, failed) => flash(`daemon: ${message}`, failed))),
    ));
    const troubled = pipelines.filter((p) => p.attention.length);
    clear(attention, troubled.length
      ? [h("h3", null, "Needs attention"), h("ul", null, troubled.flatMap((p) => p.attention.map((why) =>
        h("li", { dataset: { pipeline: p.name } }, link(`#/runs?pipeline=${encodeURIComponent(p.name)}`, p.name), ": ", why))))]
      : h("p.note", null, "Nothing needs attention."));
    const head = h("tr", null, h("th", null, "pipeline"), h("th", null, "newest run"), h("th", null, "jobs of runs still going"),
      h("th", null, "runs"), h("th", null, "next firing"), h("th", null, "cron"), h("th", null, ""));
    const paused = status.paused || {};
    const rows = pipelines.map((p) => {
      const pause = paused[p.name] || null;
      const newest = p.newest_run;
      const jobs = JOB_STATES.filter((s) => p.jobs[s]).map((s) => h("span.count", null, stateBadge(s), ` ${p.jobs[s]}`));
      const runs = Object.entries(p.runs).map(([s, n]) => `${n} ${s}`).join(", ");
      return h("tr", { dataset: { pipeline: p.name, attention: String(p.attention.length > 0), paused: String(Boolean(pause)) } },
        h("th", { scope: "row" }, link(`#/runs?pipeline=${encodeURIComponent(p.name)}`, p.name),
          p.late.length ? h("span.late", { title: p.late.join("; ") }, " late") : null,
          pause ? h("p.paused", null, h("span.state", { dataset: { state: "held" } }, "paused"), " ", order(pause)) : null),
        h("td", null, newest ? [link(`#/run/${newest.id}`, `run ${newest.id}`), " ", shortTime(newest.reference_time), " ",
          stateBadge(newest.state)] : "-"),
        h("td", null, jobs.length ? jobs : "-"),
        h("td", null, runs || "-"),
        h("td", null, p.next_firing ? shortTime(p.next_firing) : "-"),
        h("td", null, p.cron.length ? `${p.cron.join("; ")} (${p.timezone})` : "-"),
        h("td.buttons", null, actionButtons(api, "pipeline", { ...p, paused: pause },
          (message, failed) => flash(`${p.name}: ${message}`, failed))));
    });
    clear(table, h("h3", null, count(pipelines.length, "pipeline")),
      h("table", null, h("thead", null, head), h("tbody", null, rows)));
  }

  const reload = throttle(load, 300);
  const moves = (events) => events.some((e) => e.kind === "run" || e.kind === "job" || e.kind === "operator");
  const off = api.onEvents((events) => {
    if (moves(events)) reload();
  });
  // uptime, next firings and lateness move with the clock
  const timer = setInterval(load, 15000);
  load();
  // what changed while this module loaded may be after the first answer's read
  if (first && moves(first.take())) reload();
  return { stop() { stopped = true; off(); clearInterval(timer); } };
}
