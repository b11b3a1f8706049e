// What an operator can do from the page, in one table: each action names the
// API method it calls, what it acts on, the states it applies to and the
// least role it needs (docs/api.md, "Tokens and roles"). A new command of the
// API (pause, resume, set, bypass, ...) is one more entry here.

import { h } from "./util.js";

export const ACTIONS = [
  { key: "trigger", label: "Trigger", on: "pipeline", method: "runs.trigger", role: "write",
    params: (p) => ({ pipeline: p.name }), says: (r) => `run ${r.run_id} made` },
  { key: "hold", label: "Hold", on: "job", method: "jobs.hold", role: "write", states: ["waiting"],
    params: (j) => ({ job_id: j.id }), says: (r) => `now ${r.state}` },
  { key: "release", label: "Release", on: "job", method: "jobs.release", role: "write", states: ["held"],
    params: (j) => ({ job_id: j.id }), says: (r) => `now ${r.state}` },
  { key: "kill", label: "Kill", on: "job", method: "jobs.kill", role: "write",
    states: ["waiting", "held", "submitted", "running"], confirm: (j) => `Kill job ${j.id} (${j.step}[${j.index}])?`,
    params: (j) => ({ job_id: j.id }), says: (r) => `now ${r.state}` },
  { key: "rerun", label: "Rerun", on: "job", method: "jobs.rerun", role: "write",
    states: ["succeeded", "failed", "killed", "skipped", "expired"], when: (j) => j.successor === null,
    params: (j) => ({ job_id: j.id }), says: (r) => `rerun as job ${r.job_id}` },
];

const ROLES = ["read", "write", "admin"];

export function allowed(role, needed) {
  return role !== null && ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

// The buttons of the actions that apply to `thing` (a job or a pipeline);
// `done(message)` is told what came of a click.
export function actionButtons(api, on, thing, done) {
  const buttons = [];
  for (const action of ACTIONS) {
    if (action.on !== on) continue;
    if (action.states && !action.states.includes(thing.state)) continue;
    if (action.when && !action.when(thing)) continue;
    const may = allowed(api.role, action.role);
    const button = h("button", {
      type: "button",
      dataset: { action: action.key },
      disabled: !may,
      title: may ? `${action.method}` : `needs a ${action.role} token`,
      on: {
        click: async (event) => {
          event.stopPropagation();
          if (action.confirm && !window.confirm(action.confirm(thing))) return;
          button.disabled = true;
          try {
            const result = await api.call(action.method, action.params(thing));
            done(`${action.label}: ${action.says(result)}`);
          } catch (error) {
            done(`${action.label} refused: ${error.message}`, true);
          } finally {
            button.disabled = false;
          }
        },
      },
    }, action.label);
    buttons.push(button);
  }
  return buttons;
}
