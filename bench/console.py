"""The console's speed in a real browser (docs/console.md): the time to the
first paint of the overview and of a run of 1,000 jobs, and the delay from a
job's state change in the database to its colour on the page.

A database (SQLite, or PostgreSQL with --database postgresql: a throw-away
server, tests/pgserver.py) is filled with RUNS ended runs of 1,000 jobs each
(default 1,000 runs: a million jobs and their events, written through the
daemon's own write path, muppet/db/writes.py), the last of them for the
pipeline's latest cron firing, so that the daemon has no run to catch up
on; then `muppet daemon` serves it and Debian's chromium (Playwright)
opens the pages, each --repeat times in a fresh browser context (nothing
cached), first with the daemon idle, then busy: a run of BUSY_JOBS jobs
of `true` going, MAX_JOBS at a time, as fast as the daemon can (a hundred
and more jobs a second here, three events each, every one pushed to the
page; the state the bench first measured 1,188 ms in, when the daemon
caught up on a cron run of 1,000 such jobs as it started):

- overview: from navigation to the first contentful paint, and to the
  overview drawn with its data (the frame after the page marks itself
  ready);
- a run of 1,000 jobs: the same for its graph and its job table;
- live: a run of LIVE_JOBS short jobs runs while its page is open; a
  MutationObserver notes when each job's chip changes colour (the frame
  after the change), and each change is matched with the job's event in the
  log, whose ``at`` is the time of the database transaction that made it.

Each figure is the median and the worst of its repeats. The machine's
load average is printed beside them: on a shared machine the figures move
with it, so compare runs made in the same state.

Target: under 1 s each. Usage:
.venv/bin/python bench/console.py [--runs N] [--repeat N] [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import Daemon, browser  # noqa: E402  (tests/browser.py: the daemon and chromium)

from muppet import model  # noqa: E402
from muppet.db import writes  # noqa: E402
from muppet.db.store import open_store  # noqa: E402
from muppet.messages import NewRun  # noqa: E402

JOBS_PER_RUN = 1000
LIVE_JOBS = 24
BUSY_JOBS = 5000
MAX_JOBS = 8
#: the states the seeded jobs end in, in this proportion: a run's page has colours
ENDINGS = [model.JobState.SUCCEEDED] * 8 + [model.JobState.FAILED, model.JobState.SKIPPED]

PIPELINES = {
    "big": f"""
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "big"
        owner = "ops"
        cron = ["0 0 * * *"]
        [steps.fetch]
        command = "true"
        [steps.convert]
        parents = ["fetch"]
        jobs = {JOBS_PER_RUN // 2}
        command = "true"
        [steps.plot]
        parents = ["fetch"]
        jobs = {JOBS_PER_RUN // 2 - 2}
        command = "true"
        [steps.publish]
        parents = ["convert", "plot"]
        command = "true"
        """,
    "live": f"""
        [pipeline]
        name = "live"
        owner = "ops"
        [steps.work]
        jobs = {LIVE_JOBS}
        command = "sleep 0.3"
        """,
    "busy": f"""
        [pipeline]
        name = "busy"
        owner = "ops"
        [steps.work]
        jobs = {BUSY_JOBS}
        command = "true"
        """,
}

SLOTS = [("fetch", 0, 1)] + [("convert", i, JOBS_PER_RUN // 2) for i in range(JOBS_PER_RUN // 2)] + [
    ("plot", i, JOBS_PER_RUN // 2 - 2) for i in range(JOBS_PER_RUN // 2 - 2)] + [("publish", 0, 1)]


def seed(database: str, runs: int) -> float:
    """RUNS ended runs of pipeline big (a daily cron at 00:00 UTC), 1,000
    jobs each, the last for today's firing; seconds it took."""
    began = time.perf_counter()
    store = open_store(database)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=runs)
    job_id = 1
    try:
        for first in range(0, runs, 10):
            batch = []
            for run_id in range(first + 1, min(runs, first + 10) + 1):
                created = 1_700_000_000.0 + run_id * 86400
                run = model.Run(run_id, "big", start + timedelta(days=run_id), state=model.RunState.SUCCEEDED,
                                cause=model.RunCause.CRON, created_at=created, ended_at=created + 600)
                jobs = []
                for n, (step, index, count) in enumerate(SLOTS):
                    jobs.append(model.Job(
                        id=job_id, run_id=run_id, pipeline="big", step=step, index=index, count=count,
                        executor="local", state=ENDINGS[n % len(ENDINGS)], exit_code=0, host="node1",
                        batch_id=str(job_id), created_at=created, submitted_at=created + 1,
                        started_at=created + 2, ended_at=created + 30))
                    job_id += 1
                batch.append(NewRun(run, tuple(jobs)))
            writes.write(store, batch)
    finally:
        store.close()
    return time.perf_counter() - began


#: notes, in the page, when it marks itself ready and when each chip changes
#: colour, each at the next animation frame (when it is painted)
OBSERVER = """
window.__bench = {ready: {}, changes: []};
new MutationObserver((records) => {
  const now = Date.now(), at = performance.now();
  for (const r of records) {
    const el = r.target;
    if (r.attributeName === 'data-ready' && el.dataset.ready) {
      const what = el.dataset.ready;
      requestAnimationFrame(() => { window.__bench.ready[what] = performance.now(); });
    } else if (r.attributeName === 'data-state' && el.classList && el.classList.contains('chip')) {
      const id = el.dataset.jobId, state = el.dataset.state;
      requestAnimationFrame(() => window.__bench.changes.push([Number(id), state, Date.now()]));
    }
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-ready', 'data-state']});
"""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def figures(values: list[float]) -> str:
    """The median and the worst of some milliseconds."""
    return f"median {statistics.median(values):.0f} ms, worst {max(values):.0f} ms"


def first_paints(chromium: object, url: str, ready: str, repeat: int) -> str:
    """``first_paint`` ``repeat`` times, in words."""
    found = [first_paint(chromium, url, ready) for _ in range(repeat)]
    return (f"first contentful paint {figures([fcp for fcp, _ in found])}; "
            f"drawn with its data {figures([drawn for _, drawn in found])}")


def first_paint(chromium: object, url: str, ready: str) -> tuple[float, float]:
    """(first contentful paint, the view drawn with its data), ms from navigation."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.add_init_script(OBSERVER)
    page.goto(url)
    page.wait_for_function(f"() => window.__bench && window.__bench.ready['{ready}']", timeout=60_000)
    fcp = page.evaluate(
        "() => (performance.getEntriesByName('first-contentful-paint')[0] || {startTime: NaN}).startTime")
    drawn = page.evaluate(f"() => window.__bench.ready['{ready}']")
    context.close()
    return fcp, drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="ended runs of 1,000 jobs in the database")
    parser.add_argument("--repeat", type=int, default=5, help="loads of each page (fresh browser context each)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    server = None
    with tempfile.TemporaryDirectory(prefix="muppet-console-bench-") as tmp:
        folder = Path(tmp)
        (folder / "state").mkdir()
        if args.database == "postgresql":
            from pgserver import PostgresServer  # tests/pgserver.py

            server = PostgresServer()
            server.start()
            database = server.create_database("bench")
        else:
            database = f"sqlite:///{folder / 'state' / 'muppet.db'}"
        try:
            daemon = Daemon(folder, PIPELINES, max_jobs=MAX_JOBS, database=database)
            took = seed(database, args.runs)
            print(f"database: {args.database}, {args.runs} ended runs of {JOBS_PER_RUN} jobs "
                  f"({args.runs * JOBS_PER_RUN:,} jobs) written in {took:.1f} s")
            print(f"machine: {os.cpu_count()} cores, load average {load_average()} (1, 5, 15 min) before")
            daemon.start(timeout=300)
            try:
                with browser() as chromium:
                    # the browser's own start is not the page's: one blank tab first
                    warm = chromium.new_page()
                    warm.goto("about:blank")
                    warm.close()
                    middle = max(1, args.runs // 2)
                    for state in ("idle", "busy"):
                        busy = start_busy(daemon) if state == "busy" else None
                        print(f"{state}: overview, {args.repeat} loads: "
                              f"{first_paints(chromium, f'{daemon.web}/#/', 'overview', args.repeat)}")
                        print(f"{state}: run of {JOBS_PER_RUN} jobs, {args.repeat} loads: "
                              f"{first_paints(chromium, f'{daemon.web}/#/run/{middle}', 'run', args.repeat)}")
                        if busy is not None:
                            print(f"busy: {stop_busy(daemon, busy)}")
                    print(f"live: {live_delays(chromium, daemon, args.runs)}")
            finally:
                daemon.stop()
            print(f"machine: load average {load_average()} after")
        finally:
            if server is not None:
                server.stop()


def start_busy(daemon: Daemon) -> tuple[int, float]:
    """A run of pipeline busy, once its first jobs run: (its id, when)."""
    run_id = int(daemon.muppet("trigger", "busy"))
    deadline = time.monotonic() + 60
    while not json.loads(daemon.muppet("jobs", str(run_id), "--state", "running", "--json")):
        assert time.monotonic() < deadline, "the busy run did not start"
        time.sleep(0.1)
    return run_id, time.monotonic()


def stop_busy(daemon: Daemon, busy: tuple[int, float]) -> str:
    """Kill the busy run; how many of its jobs had ended meanwhile."""
    run_id, began = busy
    took = time.monotonic() - began
    status = json.loads(daemon.muppet("status", "--json"))
    daemon.muppet("kill", str(run_id), "--run")
    ended = status["jobs"].get("succeeded", 0)
    return f"{ended} of its {BUSY_JOBS} jobs ended in the {took:.0f} s measured ({ended / took:.0f} a second)"


def live_delays(chromium: object, daemon: Daemon, runs: int) -> str:
    context = chromium.new_context(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.add_init_script(OBSERVER)
    # the seeded runs wrote one event per run and per job: the live run's come after
    since = runs * (JOBS_PER_RUN + 1)
    run_id = int(daemon.muppet("trigger", "live"))
    page.goto(f"{daemon.web}/#/run/{run_id}")
    page.wait_for_function("() => window.__bench && window.__bench.ready['run']", timeout=60_000)
    deadline = time.monotonic() + 120
    while json.loads(daemon.muppet("runs", "--json", "--limit", "1"))[0]["state"] == "running":
        assert time.monotonic() < deadline, "the live run did not end"
        time.sleep(0.2)
    page.wait_for_timeout(1500)  # the last paints
    changes = page.evaluate("() => window.__bench.changes")
    context.close()
    listed = daemon.muppet("events", "--json", "--kind", "job", "--since", str(since))
    events = [json.loads(line) for line in listed.splitlines() if line]
    committed = {(e["data"]["id"], e["data"]["state"]): e["at"] for e in events if e["data"]["run_id"] == run_id}
    seen: dict[tuple[int, str], float] = {}
    for job_id, state, painted in changes:
        seen.setdefault((job_id, state), painted / 1000)
    delays = sorted(
        (seen[key] - datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()) * 1000
        for key, at in committed.items() if key in seen
    )
    if not delays:
        return "no state change seen on the page"
    return (f"{len(delays)} of {len(committed)} job state changes seen painted (the rest lasted less than a "
            f"frame); delay from the database to the colour on the page: median {statistics.median(delays):.0f} ms, "
            f"worst {max(delays):.0f} ms")


if __name__ == "__main__":
    main()
