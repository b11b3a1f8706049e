// One run: the actions on the whole run and why its jobs wait, its steps as
// a graph (each step under its parents, its jobs' states as colours and as
// words), then every job of the run in a table that only puts the rows in
// view into the page, so a run of thousands of jobs stays quick. Job events
// change it live, painted once per animation frame.
//
// A read of the run (runs.get) may answer from before an event the page has
// already seen: the events that come while a read is on its way are applied
// again on top of its answer, so the page never goes back to an older state.

import { actionButtons, actionMenu } from "./actions.js";
import { clear, count, errorBox, h, JOB_STATES, jobDuration, link, perFrame, shortTime, stateBadge, throttle } from "./util.js";

const NODE_WIDTH = 210;
const COLUMN_GAP = 60;
const ROW_GAP = 24;
//: a step with at most this many slots shows each job as a chip
const CHIPS = 24;
const ROW_HEIGHT = 30;
const VIEWPORT_ROWS = 16;

const SHORT = { waiting: "wait", held: "held", submitted: "sub", running: "run", succeeded: "ok",
  failed: "fail", killed: "kill", skipped: "skip", expired: "exp", bypassed: "byp" };
//: the reasons of waiting jobs the header shows, the most common first
const REASONS_SHOWN = 3;

export function runView(main, api, match, { flash, first }) {
  const runId = Number(match[1]);
  let stopped = false;
  let run = null;
  let steps = [];
  const jobs = new Map(); // id -> job
  const header = h("div.run-header");
  const why = h("div.why", { "aria-label": "why its jobs wait" });
  const runActions = h("div.actions", { "aria-label": "the run" });
  const graph = h("div.graph", { "aria-label": "the run's steps" });
  const filterState = h("select", { "aria-label": "only jobs in state" }, h("option", { value: "" }, "every state"),
    JOB_STATES.map((s) => h("option", { value: s }, s)));
  let filterStep = null;
  const stepNote = h("span.note");
  const viewport = h("div.viewport", { style: `height:${ROW_HEIGHT * VIEWPORT_ROWS}px` });
  const spacer = h("div.spacer");
  const rowsBox = h("div.rows");
  viewport.append(spacer, rowsBox);
  const columns = ["job", "step", "state", "exit", "try", "started", "took", "host", "batch id", "reason", ""];
  const tableHead = h("div.jobrow.head", null, columns.map((c) => h("span", null, c)));
  clear(main, header, runActions, why, graph, h("h3", null, "Jobs ", filterState, " ", stepNote), tableHead, viewport);

  let ordered = []; // the jobs the table shows, by id

  function current() {
    // each slot's newest job: the one without a successor
    return [...jobs.values()].filter((j) => j.successor === null);
  }

  function renderHeader() {
    clear(header, h("h2", null, `Run ${run.id}: `, link(`#/runs?pipeline=${encodeURIComponent(run.pipeline)}`, run.pipeline), " ",
      shortTime(run.reference_time), " ", stateBadge(run.state), run.late ? h("span.late", null, " late") : null),
    h("p.facts", null, `cause ${run.cause}, created ${shortTime(run.created_at)}, ended ${shortTime(run.ended_at)}; `,
      count(jobs.size, "job"), " (retries included)"));
    const slots = current();
    clear(runActions, actionButtons(api, "run", { ...run, slots, steps: steps.map((s) => s.name) },
      (message, failed) => flash(`run ${run.id}: ${message}`, failed)));
    // why its jobs wait, in the scheduler's words (docs/states.md, "Why a job waits")
    const reasons = new Map();
    for (const job of slots) {
      if (job.state !== "waiting" && job.state !== "held") continue;
      const key = `${job.state}: ${job.reason || "-"}`;
      reasons.set(key, (reasons.get(key) || 0) + 1);
    }
    const common = [...reasons].sort((a, b) => b[1] - a[1]);
    clear(why, run.reason ? h("p.reason", null, run.reason) : null,
      common.slice(0, REASONS_SHOWN).map(([reason, n]) => h("p.reason", null, `${count(n, "job")} ${reason}`)),
      common.length > REASONS_SHOWN ? h("p.note", null, `and ${common.length - REASONS_SHOWN} other reasons`) : null);
  }

  function layout() {
    const level = new Map();
    for (const step of steps) {
      level.set(step.name, step.parents.length ? 1 + Math.max(...step.parents.map((p) => level.get(p) ?? 0)) : 0);
    }
    const columnsOf = [];
    for (const step of steps) (columnsOf[level.get(step.name)] ||= []).push(step);
    const slotsOf = new Map(steps.map((s) => [s.name, s.jobs]));
    const place = new Map();
    let height = 0;
    columnsOf.forEach((column, c) => {
      let y = 0;
      for (const step of column) {
        const chips = slotsOf.get(step.name) <= CHIPS ? Math.ceil(slotsOf.get(step.name) / 4) : 0;
        const nodeHeight = 72 + chips * 24;
        place.set(step.name, { x: c * (NODE_WIDTH + COLUMN_GAP), y, height: nodeHeight });
        y += nodeHeight + ROW_GAP;
      }
      height = Math.max(height, y);
    });
    return { place, width: columnsOf.length * (NODE_WIDTH + COLUMN_GAP), height };
  }

  let nodes = new Map(); // step -> { counts, bar, chips: Map(index -> el) }

  function buildGraph() {
    const { place, width, height } = layout();
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("class", "edges");
    for (const step of steps) {
      const to = place.get(step.name);
      for (const parent of step.parents) {
        const from = place.get(parent);
        if (!from) continue;
        const x1 = from.x + NODE_WIDTH;
        const y1 = from.y + 30;
        const x2 = to.x;
        const y2 = to.y + 30;
        const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
        path.setAttribute("d", `M${x1},${y1} C${x1 + COLUMN_GAP / 2},${y1} ${x2 - COLUMN_GAP / 2},${y2} ${x2},${y2}`);
        svg.append(path);
      }
    }
    const box = h("div.canvas", { style: `width:${width}px;height:${height}px` }, svg);
    nodes = new Map();
    for (const step of steps) {
      const at = place.get(step.name);
      const counts = h("p.counts");
      const bar = h("div.bar");
      const chips = new Map();
      const chipBox = h("div.chips");
      if (step.jobs <= CHIPS) {
        for (let i = 0; i < step.jobs; i += 1) {
          const chip = h("a.chip", { href: "#" }, "");
          chips.set(i, chip);
          chipBox.append(chip);
        }
      }
      const node = h("div.node", {
        style: `left:${at.x}px;top:${at.y}px;width:${NODE_WIDTH}px;height:${at.height}px`,
        dataset: { step: step.name },
        on: { click: (event) => {
          if (event.target.closest(".chip")) return;
          filterStep = filterStep === step.name ? null : step.name;
          refilter();
        } },
      }, h("p.name", null, step.name, h("span.note", null, ` ${count(step.jobs, "job")}`)), bar, counts, chipBox);
      nodes.set(step.name, { counts, bar, chips, node });
      box.append(node);
    }
    clear(graph, box);
  }

  function paintGraph() {
    const bySlot = new Map();
    for (const job of current()) bySlot.set(`${job.step}[${job.index}]`, job);
    for (const step of steps) {
      const node = nodes.get(step.name);
      if (!node) continue;
      const tally = {};
      for (let i = 0; i < step.jobs; i += 1) {
        const job = bySlot.get(`${step.name}[${i}]`);
        const state = job ? job.state : "waiting";
        tally[state] = (tally[state] || 0) + 1;
        const chip = node.chips.get(i);
        if (chip && job && (chip.dataset.state !== state || chip.dataset.jobId !== String(job.id))) {
          chip.dataset.state = state;
          chip.dataset.jobId = String(job.id);
          chip.href = `#/job/${job.id}`;
          chip.title = `job ${job.id}: ${step.name}[${i}] ${state}${job.reason ? ` (${job.reason})` : ""}`;
          chip.textContent = `${i} ${SHORT[state] || state}`;
        }
      }
      const present = JOB_STATES.filter((s) => tally[s]).concat(Object.keys(tally).filter((s) => !JOB_STATES.includes(s)));
      node.node.dataset.states = present.join(" ");
      clear(node.bar, present.map((s) => h("span", { dataset: { state: s }, style: `flex-grow:${tally[s]}`, title: `${tally[s]} ${s}` })));
      node.counts.textContent = present.map((s) => `${tally[s]} ${s}`).join(" · ");
    }
  }

  function refilter() {
    const state = filterState.value;
    ordered = [...jobs.values()].filter((j) => (!state || j.state === state) && (!filterStep || j.step === filterStep))
      .sort((a, b) => a.id - b.id);
    stepNote.textContent = filterStep ? `of step ${filterStep} (click the step again for all)` : "";
    for (const [name, node] of nodes) node.node.classList.toggle("chosen", name === filterStep);
    spacer.style.height = `${ordered.length * ROW_HEIGHT}px`;
    paintRows();
  }

  function paintRows() {
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - 2);
    const last = Math.min(ordered.length, first + VIEWPORT_ROWS + 4);
    const rows = [];
    for (let i = first; i < last; i += 1) {
      const job = ordered[i];
      rows.push(h("div.jobrow", { style: `top:${i * ROW_HEIGHT}px`, dataset: { jobId: job.id, state: job.state } },
        h("span", null, link(`#/job/${job.id}`, String(job.id))),
        h("span", null, `${job.step}[${job.index}]`),
        h("span", null, stateBadge(job.state)),
        h("span", null, job.exit_code ?? "-"),
        h("span", null, String(job.failures + 1)),
        h("span", null, shortTime(job.started_at)),
        h("span", null, jobDuration(job)),
        h("span", null, job.host || "-"),
        h("span", null, job.batch_id || "-"),
        h("span.reason", { title: job.reason || "" }, job.reason || "-"),
        h("span", null, actionMenu(api, "job", job, (message, failed) => flash(`job ${job.id}: ${message}`, failed)))));
    }
    clear(rowsBox, rows);
  }

  const paint = perFrame(() => {
    if (stopped || !run) return;
    renderHeader();
    paintGraph();
    refilter();
  });

  viewport.addEventListener("scroll", perFrame(paintRows));
  filterState.addEventListener("change", refilter);

  // the events seen while a read is on its way, applied again on its answer
  const reading = new Set();

  function apply(events) {
    let touched = false;
    for (const event of events) {
      if (event.kind === "job" && event.data.run_id === runId) {
        const before = jobs.get(event.data.id);
        // a waiting job's reason is the scheduler's, read with the run; the
        // event carries the database's (empty) one
        const keep = before && before.state === event.data.state && !event.data.reason ? { reason: before.reason } : {};
        jobs.set(event.data.id, { ...event.data, ...keep });
        touched = true;
      } else if (event.kind === "run" && event.data.id === runId && run) {
        run = { ...run, ...event.data };
        touched = true;
      }
    }
    return touched;
  }

  // `first`: runs.get and pipelines.list, which main.js sent while this
  // module loaded, and the events it saw since
  async function load(first) {
    const seen = first ? first.take() : [];
    reading.add(seen);
    try {
      let found;
      if (first) {
        const [got, pipelines] = await first.answer;
        found = got;
        const pipeline = pipelines.find((p) => p.name === got.pipeline);
        if (pipeline) steps = pipeline.steps;
      } else {
        found = await api.call("runs.get", { run_id: runId });
      }
      if (stopped) return;
      const fresh = !run;
      run = found;
      jobs.clear();
      for (const job of found.jobs) jobs.set(job.id, job);
      apply(seen);
      if (fresh) {
        if (!steps.length) {
          steps = [...new Set(found.jobs.map((j) => j.step))].map((name) => ({
            name, parents: [], jobs: Math.max(...found.jobs.filter((j) => j.step === name).map((j) => j.index)) + 1 }));
        }
        buildGraph();
      }
      renderHeader();
      paintGraph();
      refilter();
      main.dataset.ready = "run";
    } catch (error) {
      if (!stopped) clear(header, errorBox(error));
    } finally {
      reading.delete(seen);
    }
  }

  const reloadSoon = throttle(() => load(null), 500);
  const off = api.onEvents((events) => {
    for (const seen of reading) seen.push(...events);
    if (apply(events)) paint();
    // a pause, a drain or their end changes why jobs wait, without a job event
    if (events.some((e) => e.kind === "operator" && e.data.action !== "trigger")) reloadSoon();
  });
  // why each waiting job waits changes without an event (a slot frees up
  // elsewhere): read the run again now and then while some wait
  const timer = setInterval(() => {
    if ([...jobs.values()].some((j) => j.state === "waiting" || j.state === "held")) load(null);
  }, 10000);
  load(first);
  return { stop() { stopped = true; off(); clearInterval(timer); } };
}
