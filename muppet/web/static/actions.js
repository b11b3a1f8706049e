// What an operator can do from the page, in one table: each action names the
// API method it calls, what it acts on, when it applies and the least role it
// needs (docs/api.md, "Tokens and roles"); the same commands as `muppet hold`,
// `kill`, `rerun`, `set`, `bypass`, `pause`, `drain`, `request` (docs/cli.md).
// A new command of the API is one more entry here.
//
// Every action opens one dialog: what it will do, the fields it needs, and a
// reason, which the daemon keeps with the token's name in the operator event
// (docs/api.md, "Operator events"). Nothing happens before its button is
// pressed; a destructive one (kill, set, bypass, drain) says what cannot be
// undone and has a red button. A refusal stays in the dialog, in the API's
// words, which say what to do instead.
//
// What each action acts on:
//   job       a job as the API gives it
//   run       a run, with `slots` (the newest job of each slot) and `steps`
//   pipeline  a pipelines.status item, with `paused` (daemon.status)
//   daemon    { draining } (daemon.status)
//   product   a product, with `latest` (its latest instance) and `producers`

import { h } from "./util.js";

const ENDED = ["succeeded", "failed", "killed", "skipped", "expired", "bypassed"];
const UNSUCCESSFUL = ["failed", "killed", "skipped", "expired", "bypassed"];
const NOT_ENDED = ["waiting", "held", "submitted", "running"];

const slot = (j) => `job ${j.id} (${j.step}[${j.index}])`;
const newest = (j) => j.successor === null || j.successor === undefined;
const tally = (run, states) => run.slots.filter((j) => states.includes(j.state)).length;
const jobs = (n) => `${n} job${n === 1 ? "" : "s"}`;

function timeField(name, label, value, required) {
  return h("label", null, `${label} `, h("input", {
    name, value: value || "", required, size: 24, placeholder: "2026-11-28T06:00:00Z", autocomplete: "off",
  }));
}

export const ACTIONS = [
  // --- a pipeline
  { key: "trigger", label: "Trigger", on: "pipeline", method: "runs.trigger", role: "write",
    title: (p) => `Trigger ${p.name}`,
    explain: () => "Makes a run now. Without a reference time it is now, in whole seconds.",
    fields: () => [timeField("reference_time", "reference time", "", false)],
    params: (p, v) => ({ pipeline: p.name, reference_time: v.reference_time || null }),
    says: (r) => `run ${r.run_id} made` },
  { key: "pause", label: "Pause", on: "pipeline", method: "pipelines.pause", role: "write",
    applies: (p) => !p.paused,
    title: (p) => `Pause ${p.name}`,
    explain: () => "No new job of it starts until it is resumed; running ones finish. Its cron firings make "
      + "runs that wait, queued. Its waiting jobs say why.",
    params: (p) => ({ pipeline: p.name }), says: () => "paused" },
  { key: "resume", label: "Resume", on: "pipeline", method: "pipelines.resume", role: "write",
    applies: (p) => Boolean(p.paused),
    title: (p) => `Resume ${p.name}`,
    explain: () => "Its jobs start again. Of the cron runs made while it was paused, its catch-up policy "
      + "picks which run; the others expire without running.",
    params: (p) => ({ pipeline: p.name }), says: () => "resumed" },

  // --- the daemon
  { key: "drain", label: "Drain", on: "daemon", method: "daemon.drain", role: "admin", destructive: true,
    applies: (d) => !d.draining,
    title: () => "Drain the daemon",
    explain: () => "The daemon starts no new job at all, of any pipeline, until it is undrained; running jobs "
      + "finish. Cron still makes runs and triggers are still taken; their jobs wait.",
    params: () => ({}), says: () => "the daemon is draining: no new job starts" },
  { key: "undrain", label: "Undrain", on: "daemon", method: "daemon.undrain", role: "admin",
    applies: (d) => Boolean(d.draining),
    title: () => "Undrain the daemon",
    explain: () => "The daemon starts jobs again.",
    params: () => ({}), says: () => "the daemon starts jobs again" },

  // --- a run
  { key: "hold-run", label: "Hold", on: "run", method: "runs.hold", role: "write",
    applies: (r) => tally(r, ["waiting"]) > 0,
    title: (r) => `Hold run ${r.id}`,
    explain: (r) => `Its ${jobs(tally(r, ["waiting"]))} waiting ${tally(r, ["waiting"]) === 1 ? "is" : "are"} held: `
      + "none starts until released.",
    params: (r) => ({ run_id: r.id }), says: (a) => `hold of ${jobs(a.jobs)}` },
  { key: "release-run", label: "Release", on: "run", method: "runs.release", role: "write",
    applies: (r) => tally(r, ["held"]) > 0,
    title: (r) => `Release run ${r.id}`,
    explain: (r) => `Its ${jobs(tally(r, ["held"]))} held start again when their turn comes.`,
    params: (r) => ({ run_id: r.id }), says: (a) => `release of ${jobs(a.jobs)}` },
  { key: "kill-run", label: "Kill", on: "run", method: "runs.kill", role: "write", destructive: true,
    applies: (r) => tally(r, NOT_ENDED) > 0,
    title: (r) => `Kill run ${r.id}`,
    explain: (r) => `Every job of the run that has not ended (${tally(r, NOT_ENDED)}) is killed: waiting and `
      + "held ones at once, running ones by their executor. Killed jobs are not retried; the run ends failed.",
    params: (r) => ({ run_id: r.id }), says: (a) => `kill of ${jobs(a.jobs)}` },
  { key: "rerun-failed", label: "Rerun failed", on: "run", method: "runs.rerun", role: "write",
    applies: (r) => tally(r, ["failed", "killed", "expired", "skipped"]) > 0,
    title: (r) => `Rerun the failed slots of run ${r.id}`,
    explain: (r) => `Every failed, killed, expired or skipped slot (${tally(r, ["failed", "killed", "expired", "skipped"])}) `
      + "runs again as a new job with a full set of tries, parents first; a finished run reopens.",
    params: (r) => ({ run_id: r.id }), says: (a) => `${a.jobs} slot(s) run again` },
  { key: "bypass", label: "Bypass a step", on: "run", method: "runs.bypass", role: "write", destructive: true,
    applies: (r) => r.steps.some((s) => r.slots.some((j) => j.step === s && NOT_ENDED.includes(j.state))),
    title: (r) => `Bypass a step of run ${r.id}`,
    explain: () => "The step's jobs that have not started end bypassed: never run, no outputs registered. "
      + "The steps after it go on as if it had succeeded. Refused while a job of the step runs.",
    fields: (r) => [h("label", null, "step ", h("select", { name: "step", required: true },
      r.steps.filter((s) => r.slots.some((j) => j.step === s && NOT_ENDED.includes(j.state)))
        .map((s) => h("option", { value: s }, s))))],
    params: (r, v) => ({ run_id: r.id, step: v.step }), says: (a, r, v) => `${v.step} bypassed (${jobs(a.jobs)})` },

  // --- a job
  { key: "hold", label: "Hold", on: "job", method: "jobs.hold", role: "write",
    applies: (j) => j.state === "waiting",
    title: (j) => `Hold ${slot(j)}`, explain: () => "It does not start until released.",
    params: (j) => ({ job_id: j.id }), says: (r) => `now ${r.state}` },
  { key: "release", label: "Release", on: "job", method: "jobs.release", role: "write",
    applies: (j) => j.state === "held",
    title: (j) => `Release ${slot(j)}`, explain: () => "It starts again when its turn comes.",
    params: (j) => ({ job_id: j.id }), says: (r) => `now ${r.state}` },
  { key: "kill", label: "Kill", on: "job", method: "jobs.kill", role: "write", destructive: true,
    applies: (j) => NOT_ENDED.includes(j.state),
    title: (j) => `Kill ${slot(j)}`,
    explain: (j) => (["submitted", "running"].includes(j.state)
      ? "Its process is killed (SIGTERM to its process group, or the batch system's kill) and it ends killed."
      : "It ends killed at once.") + " A killed job is not retried; the jobs that depend on it are skipped.",
    params: (j) => ({ job_id: j.id }), says: (r) => `now ${r.state}` },
  { key: "rerun", label: "Rerun", on: "job", method: "jobs.rerun", role: "write",
    applies: (j) => ENDED.includes(j.state) && newest(j),
    title: (j) => `Rerun ${slot(j)}`,
    explain: () => "A new job of its slot, with a full set of tries; the jobs downstream that were skipped "
      + "because of it run too, and a finished run reopens.",
    params: (j) => ({ job_id: j.id }), says: (r) => `rerun as job ${r.job_id}` },
  { key: "rerun-downstream", label: "Rerun with downstream", on: "job", method: "jobs.rerun", role: "write",
    applies: (j) => ENDED.includes(j.state) && newest(j),
    title: (j) => `Rerun ${slot(j)} and every job after it`,
    explain: () => "A new job of its slot, and every job after it in the run runs again too, whatever it "
      + "ended as, each after its parents: for output that was wrong although the job succeeded.",
    params: (j) => ({ job_id: j.id, downstream: true }), says: (r) => `rerun as job ${r.job_id}, with downstream` },
  { key: "set-succeeded", label: "Set succeeded", on: "job", method: "jobs.set", role: "write", destructive: true,
    applies: (j) => ["waiting", "held"].includes(j.state) || (UNSUCCESSFUL.includes(j.state) && newest(j)),
    title: (j) => `Set ${slot(j)} succeeded`,
    explain: (j) => (["waiting", "held"].includes(j.state)
      ? "It ends succeeded without running; the jobs downstream run."
      : "A new job of its slot records the success (this one keeps what happened); what was skipped "
        + "because of it runs.") + " Nothing checks that its output exists.",
    params: (j) => ({ job_id: j.id, outcome: "succeeded" }), says: (r) => `set as job ${r.job_id} (now ${r.state})` },
  { key: "set-failed", label: "Set failed", on: "job", method: "jobs.set", role: "write", destructive: true,
    applies: (j) => ["waiting", "held"].includes(j.state),
    title: (j) => `Set ${slot(j)} failed`,
    explain: () => "It ends failed without running; the jobs downstream are skipped.",
    params: (j) => ({ job_id: j.id, outcome: "failed" }), says: (r) => `now ${r.state}` },

  // --- a product of the index
  { key: "request", label: "Request update", on: "product", method: "products.request_update", role: "write",
    applies: (p) => p.producers.length > 0,
    title: (p) => `Request an update of ${p.slug}`,
    explain: (p) => `${p.producers.join(" or ")} makes a run for that reference time, or, when it has one, runs `
      + "again the steps that make the product and every step after them. While the products it requires "
      + "are not complete for that time, the request waits.",
    fields: (p) => [timeField("reference_time", "reference time", p.latest ? p.latest.reference_time : "", true),
      p.producers.length > 1 ? h("label", null, "pipeline ", h("select", { name: "pipeline" },
        p.producers.map((name) => h("option", { value: name }, name)))) : null],
    params: (p, v) => ({ product: p.slug, reference_time: v.reference_time, pipeline: v.pipeline || null }),
    says: (r) => (r.state === "waiting" ? `request ${r.request_id} waits for ${r.waiting_for.join(", ")}`
      : `request ${r.request_id}: run ${r.run_id} ${r.made ? "made" : `runs the steps that make it again`}`) },
];

const ROLES = ["read", "write", "admin"];

export function allowed(role, needed) {
  return role !== null && ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

function applicable(on, thing) {
  return ACTIONS.filter((a) => a.on === on && (!a.applies || a.applies(thing)));
}

// Opens the dialog of `action` on `thing`; `done(message, failed)` is told
// what came of it once the daemon has answered.
export function perform(api, action, thing, done) {
  const dialog = document.getElementById("action-dialog");
  const form = dialog.querySelector("form");
  const confirm = form.querySelector("[data-confirm]");
  const problem = form.querySelector(".problem");
  const reason = form.elements.reason;
  dialog.dataset.action = action.key;
  dialog.dataset.destructive = String(Boolean(action.destructive));
  form.querySelector("h2").textContent = action.title(thing);
  form.querySelector(".explain").textContent = action.explain(thing)
    + (action.destructive ? " It cannot be undone." : "");
  form.querySelector(".fields").replaceChildren(...(action.fields ? action.fields(thing) : []).filter(Boolean));
  reason.value = "";
  problem.hidden = true;
  problem.textContent = "";
  confirm.textContent = action.label;
  confirm.disabled = false;
  form.querySelector("[data-cancel]").onclick = () => dialog.close("cancel");
  form.onsubmit = async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    confirm.disabled = true;
    try {
      const result = await api.call(action.method, { ...action.params(thing, values), reason: values.reason.trim() });
      dialog.close("ok");
      done(`${action.label}: ${action.says(result, thing, values)}`);
    } catch (error) {
      // the API's own words: they say what to do instead
      problem.textContent = `Refused: ${error.message}`;
      problem.hidden = false;
    } finally {
      confirm.disabled = false;
    }
  };
  dialog.showModal();
  (form.querySelector(".fields input, .fields select") || reason).focus();
}

// The buttons of the actions that apply to `thing` (see the top).
export function actionButtons(api, on, thing, done) {
  return applicable(on, thing).map((action) => {
    const may = allowed(api.role, action.role);
    return h("button", {
      type: "button",
      dataset: action.destructive ? { action: action.key, destructive: "true" } : { action: action.key },
      disabled: !may,
      title: may ? action.method : `needs ${action.role === "admin" ? "an" : "a"} ${action.role} token`,
      on: { click: (event) => { event.stopPropagation(); perform(api, action, thing, done); } },
    }, action.label);
  });
}

// The same as one menu, for a row of a table with no room for buttons.
export function actionMenu(api, on, thing, done) {
  const actions = applicable(on, thing);
  if (!actions.length) return "-";
  const menu = h("select.act", {
    "aria-label": "act on it",
    dataset: { actions: actions.map((a) => a.key).join(" ") },
    on: { change: () => {
      const action = actions.find((a) => a.key === menu.value);
      menu.value = "";
      if (action) perform(api, action, thing, done);
    }, click: (event) => event.stopPropagation() },
  }, h("option", { value: "" }, "act…"), actions.map((a) => {
    const may = allowed(api.role, a.role);
    return h("option", { value: a.key, disabled: !may }, may ? a.label : `${a.label} (needs ${a.role})`);
  }));
  return menu;
}
