// The Productstatus index: the products, each with **Request update**
// (products.request_update) when a pipeline produces it, and the requests
// for updates (requests.list); a product's latest instances with their
// completeness; an instance's files, each with its copies on every service
// backend (muppet-sync's consumers register theirs, with the peer that seeds
// it). File and instance events of the product shown read it again; run and
// operator events read the requests again (a request is carried out by a run).

import { actionButtons } from "./actions.js";
import { bytes, clear, errorBox, h, link, shortTime, throttle } from "./util.js";

//: the requests the products page lists, newest first
const REQUESTS_SHOWN = 50;

export function indexView(main, api, match, { flash }) {
  const product = match[1] ? decodeURIComponent(match[1]) : null;
  const instanceId = match[2] ? Number(match[2]) : null;
  let stopped = false;
  const box = h("div");
  clear(main, h("h2", null, "Index", product ? [": ", link("#/index", "products"), " / ", product] : ""), box);

  async function products() {
    const [page, pipelines] = await api.batch([["products.list", { limit: 1000 }], ["pipelines.list"]]);
    const rows = await Promise.all(page.items.map(async (p) => {
      const latest = await api.call("instances.latest", { product: p.slug });
      const producers = pipelines.filter((pipeline) => (pipeline.produces || []).includes(p.slug)).map((x) => x.name);
      const request = actionButtons(api, "product", { ...p, latest, producers },
        (message, failed) => flash(`${p.slug}: ${message}`, failed));
      return h("tr", { dataset: { product: p.slug } },
        h("th", { scope: "row" }, link(`#/index/${encodeURIComponent(p.slug)}`, p.slug)),
        h("td", null, p.name), h("td", null, p.contact || "-"), h("td", null, String(p.file_count)),
        h("td", null, latest ? `${shortTime(latest.reference_time)} v${latest.version}` : "-"),
        h("td", null, latest ? (latest.completed_at ? `complete since ${shortTime(latest.completed_at)}` : "incomplete") : "-"),
        h("td.buttons", null, request.length ? request : producers.length ? "" : h("span.note", { title:
          "no pipeline lists it in produces (docs/configuration.md)" }, "no pipeline makes it")));
    }));
    return h("table", null, h("thead", null, h("tr", null, ["product", "name", "contact", "files per instance", "latest instance", "", ""]
      .map((t) => h("th", null, t)))), h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 7 }, "no products"))));
  }

  async function requests() {
    const found = await api.call("requests.list", { limit: REQUESTS_SHOWN });
    const rows = found.map((r) => h("tr", { dataset: { requestId: r.id, state: r.state } },
      h("td", null, String(r.id)), h("td", null, r.product), h("td", null, shortTime(r.reference_time)),
      h("td", null, r.pipeline), h("td", null, r.state),
      h("td", null, r.waiting_for.length ? r.waiting_for.join(", ") : "-"),
      h("td", null, r.run_id ? link(`#/run/${r.run_id}`, `run ${r.run_id}`) : "-"),
      h("td", null, r.by), h("td", null, r.reason || "-"), h("td", null, shortTime(r.created_at))));
    return [h("h3", null, "Requests for updates"),
      h("table.requests", null, h("thead", null, h("tr", null, ["request", "product", "reference time", "pipeline", "state",
        "waiting for", "run", "by", "reason", "asked"].map((t) => h("th", null, t)))),
      h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 10 }, "no requests"))))];
  }

  async function instances() {
    const page = await api.call("instances.list", { product, limit: 20 });
    const rows = await Promise.all(page.items.map(async (i) => {
      const done = await api.call("instances.completeness", { instance_id: i.id });
      const pairs = done.pairs.map((p) => `${p.backend}/${p.format}: ${p.files} of ${p.file_count}`).join(", ");
      return h("tr", { dataset: { instanceId: i.id, complete: String(done.complete) } },
        h("td", null, link(`#/index/${encodeURIComponent(product)}/${i.id}`, shortTime(i.reference_time))),
        h("td", null, `v${i.version}`), h("td", null, done.complete ? "complete" : "incomplete"),
        h("td", null, pairs || "-"), h("td", null, shortTime(i.completed_at)));
    }));
    return [h("h3", null, "Latest instances"),
      h("table", null, h("thead", null, h("tr", null, ["reference time", "version", "", "files per backend and format", "complete since"]
        .map((t) => h("th", null, t)))), h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 5 }, "no instances"))))];
  }

  async function files() {
    const items = [];
    let cursor = null;
    do {
      const page = await api.call("files.list", { instance_id: instanceId, cursor, limit: 1000 });
      items.push(...page.items);
      cursor = page.next;
    } while (cursor && items.length < 10000);
    const byData = new Map();
    for (const file of items) {
      if (!byData.has(file.data_id)) byData.set(file.data_id, []);
      byData.get(file.data_id).push(file);
    }
    const rows = [...byData.values()].map((copies) => {
      const first = copies[0];
      return h("tr", { dataset: { dataId: first.data_id } },
        h("td", null, first.name), h("td", null, first.format), h("td", null, bytes(first.size)),
        h("td", null, h("ul.copies", null, copies.map((c) => h("li", { dataset: { backend: c.backend } },
          h("b", null, c.backend), ` ${c.url}`, c.peer ? ` (seeded by ${c.peer})` : "", c.partial ? " partial" : "")))),
        h("td", null, shortTime(first.expires)));
    });
    return [h("h3", null, `Files of instance ${instanceId}`),
      h("table", null, h("thead", null, h("tr", null, ["file", "format", "size", "copies", "expires"].map((t) => h("th", null, t)))),
        h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 5 }, "no files"))))];
  }

  async function load() {
    try {
      const parts = [];
      if (!product) parts.push(...await Promise.all([products(), requests()]));
      else {
        parts.push(...await instances());
        if (instanceId) parts.push(...await files());
      }
      if (stopped) return;
      clear(box, parts);
      main.dataset.ready = "index";
    } catch (error) {
      if (!stopped) clear(box, errorBox(error));
    }
  }

  const reload = throttle(load, 500);
  const off = api.onEvents((events) => {
    if (events.some((e) => ((e.kind === "file" || e.kind === "instance" || e.kind === "product")
      && (!product || e.product === product)) || (!product && (e.kind === "run" || e.kind === "operator")))) reload();
  });
  load();
  return { stop() { stopped = true; off(); } };
}
