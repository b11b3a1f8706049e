// One job: what it runs (command, environment), its times, host, batch id,
// exit code and reason, its predecessor and successor, the actions its state
// allows, and its output, followed live while the job runs (jobs.output,
// asked again from where the last answer ended until "more" is false).

import { actionButtons } from "./actions.js";
import { clear, errorBox, h, jobDuration, link, shortTime, stateBadge } from "./util.js";

//: the most output kept on the page; older text is dropped from the top
const KEEP_CHARS = 2 * 1024 * 1024;

export function jobView(main, api, match, { flash }) {
  const jobId = Number(match[1]);
  let stopped = false;
  let job = null;
  const facts = h("dl.facts");
  const actions = h("div.actions");
  const command = h("div.command");
  const streamSelect = h("select", { "aria-label": "stream" }, h("option", { value: "stdout" }, "stdout"),
    h("option", { value: "stderr" }, "stderr"));
  const logState = h("span.note", { dataset: { role: "log-state" } });
  const log = h("pre.log", { tabindex: "0", "aria-label": "output" });
  const title = h("h2");
  clear(main, title, actions, facts, command, h("h3", null, "Output ", streamSelect, " ", logState), log);

  function renderJob() {
    clear(title, `Job ${job.id}: ${job.pipeline}.${job.step}[${job.index}] `, stateBadge(job.state),
      job.late ? h("span.late", null, " late") : null);
    title.dataset.state = job.state;
    const rows = [
      ["run", link(`#/run/${job.run_id}`, `run ${job.run_id}`)],
      ["state", job.state + (job.kill_requested && !["killed", "succeeded", "failed"].includes(job.state) ? " (kill requested)" : "")],
      ["reason", job.reason || "-"],
      ["exit code", job.exit_code ?? "-"],
      ["try", `${job.failures + 1} (failures before it: ${job.failures})`],
      ["predecessor", job.predecessor ? link(`#/job/${job.predecessor}`, `job ${job.predecessor}`) : "-"],
      ["successor", job.successor ? link(`#/job/${job.successor}`, `job ${job.successor}`) : "-"],
      ["executor", job.executor],
      ["host", job.host || "-"],
      ["batch id", job.batch_id || "-"],
      ["created", shortTime(job.created_at)],
      ["not before", shortTime(job.not_before)],
      ["submitted", shortTime(job.submitted_at)],
      ["started", shortTime(job.started_at)],
      ["ended", shortTime(job.ended_at)],
      ["took", jobDuration(job)],
    ];
    clear(facts, rows.map(([k, v]) => [h("dt", null, k), h("dd", { dataset: { fact: k } }, v)]));
    clear(actions, actionButtons(api, "job", job, (message, failed) => flash(`job ${job.id}: ${message}`, failed)));
  }

  function renderCommand(what) {
    const env = Object.entries(what.environment || {});
    clear(command, h("h3", null, "Command"),
      h("pre.cmd", null, what.command ?? "(its step is no longer configured)"),
      h("details", null, h("summary", null, `Environment (${env.length} variables besides the daemon's own)`),
        h("pre.env", null, env.map(([k, v]) => `${k}=${v}`).join("\n"))),
      h("p.note", null, `job directory ${what.job_dir}, scratch ${what.scratch}`));
  }

  let following = 0; // a new follow stops the old one
  async function follow(stream) {
    const mine = ++following;
    log.textContent = "";
    let offset = null;
    for (;;) {
      let piece;
      try {
        piece = await api.call("jobs.output", { job_id: jobId, stream, offset, wait: offset === null ? 0 : 10 });
      } catch (error) {
        if (stopped || mine !== following) return;
        logState.textContent = `reading the output failed: ${error.message}; trying again`;
        await new Promise((r) => setTimeout(r, 2000));
        continue;
      }
      if (stopped || mine !== following) return;
      if (offset === null && piece.offset) log.append(`[... ${piece.offset.toLocaleString("en")} bytes before]\n`);
      if (piece.text) {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(piece.text);
        if (log.textContent.length > KEEP_CHARS) log.textContent = log.textContent.slice(-KEEP_CHARS);
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      log.dataset.bytes = String(piece.next ?? "");
      logState.textContent = piece.more ? "following (live)" : piece.kept === "database" ? "the tail the database kept" : "complete";
      logState.dataset.more = String(piece.more);
      if (!piece.more || piece.next === null) return;
      offset = piece.next;
    }
  }

  // the events of this job that came while a read was on its way: its
  // answer may be older, and they apply again on top of it
  const reading = new Set();

  function apply(event) {
    const keep = job && job.state === event.data.state && !event.data.reason ? { reason: job.reason } : {};
    job = { ...event.data, ...keep };
  }

  async function load() {
    const mine = [];
    reading.add(mine);
    try {
      const [found, what] = await api.batch([["jobs.get", { job_id: jobId }], ["jobs.command", { job_id: jobId }]]);
      if (stopped) return;
      job = found;
      mine.forEach(apply);
      renderJob();
      renderCommand(what);
      main.dataset.ready = "job";
    } catch (error) {
      if (!stopped) clear(title, errorBox(error));
    } finally {
      reading.delete(mine);
    }
  }

  streamSelect.addEventListener("change", () => follow(streamSelect.value));
  const off = api.onEvents((events) => {
    for (const event of events) {
      if (event.kind !== "job" || event.data.id !== jobId) continue;
      for (const mine of reading) mine.push(event);
      if (job) {
        apply(event);
        renderJob();
      }
    }
  });
  // the reason a waiting job waits, and its duration so far, move without events
  const timer = setInterval(() => {
    if (job && !job.ended_at) load();
  }, 5000);
  load().then(() => follow("stdout"));
  return { stop() { stopped = true; following += 1; off(); clearInterval(timer); } };
}
