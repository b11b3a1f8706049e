// The live event stream: the last 200 events of the log, then each new one
// as it is committed, newest on top (at most 500 on the page).

import { clear, errorBox, h, link, shortTime } from "./util.js";

const SHOWN = 500;

function describe(event) {
  const d = event.data;
  switch (event.kind) {
    case "run": return [link(`#/run/${d.id}`, `run ${d.id}`), ` ${d.pipeline} ${shortTime(d.reference_time)} ${d.state}`];
    case "job": return [link(`#/job/${d.id}`, `job ${d.id}`), ` ${d.pipeline}.${d.step}[${d.index}] ${d.state}${d.reason ? ` (${d.reason})` : ""}`];
    case "instance": return [`instance ${d.id} ${d.product} ${shortTime(d.reference_time)} v${d.version}${d.completed_at ? " complete" : ""}`];
    case "file": return [`file ${d.id} ${d.backend} ${d.url}${d.deleted ? " deleted" : ""}`];
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
