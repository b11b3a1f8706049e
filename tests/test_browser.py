"""The console in a real browser (docs/console.md): Debian's chromium driven
by Playwright against a real `muppet daemon` process. Trigger a run from the
page and watch its jobs change state live, open a job and watch its log
grow, kill a job; bypass a step of a run (a refusal first) and kill the
whole run, each with a reason; pause a pipeline and drain the daemon and
see both on the pages, and the operator events in words; request a
product's update; and keep screenshots of every page in docs/images/ (each
checked not to be blank). Every wait is for a condition, with a deadline."""

from __future__ import annotations

import html
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from browser import Daemon, browser, chromium_missing, png_colours, save_screenshot  # tests/ is on sys.path
from services import service_missing

from muppet.api.client import connect

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
#: a screenshot of a page shows text, colours and lines; a blank or broken
#: one has a handful of colours
LEAST_COLOURS = 30

PIPELINES = {
    "live": """
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "live"
        owner = "ops"
        cron = ["0 */6 * * *"]
        [steps.tick]
        command = 'for i in $(seq 1 40); do echo "tick $i"; sleep 0.1; done'
        [steps.convert]
        parents = ["tick"]
        jobs = 6
        command = "echo converting $MUPPET_JOB_INDEX; sleep 60"
        [steps.plot]
        parents = ["tick"]
        command = "echo plotted"
        [steps.publish]
        parents = ["convert", "plot"]
        command = "echo published"
        """,
    "archive": """
        [pipeline]
        name = "archive"
        owner = "ops"
        [steps.copy]
        command = "exit 2"
        """,
    # gate runs until killed; make waits on it, so that it can be bypassed
    "steer": """
        [pipeline]
        name = "steer"
        owner = "ops"
        [steps.gate]
        command = "sleep 120"
        [steps.make]
        parents = ["gate"]
        jobs = 2
        command = "true"
        [steps.last]
        parents = ["make"]
        command = "true"
        """,
    "maker": """
        [pipeline]
        name = "maker"
        owner = "ops"
        produces = ["arome"]
        [steps.make]
        command = "true"
        """,
}
#: the longest a condition on the page may take to come (a safety net for a
#: loaded machine, not a timing)
DEADLINE = 20_000

INDEX = """
[products.arome]
name = "AROME"
contact = "ops"
file_count = 2
[backends.lustre-a]
name = "Lustre A"
url = "file:///lustre/a"
[backends.thredds-1]
name = "THREDDS 1"
url = "https://thredds-1.example/fileServer"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    missing = chromium_missing()
    if missing:
        service_missing(missing)
    running = Daemon(tmp_path_factory.mktemp("console"), PIPELINES, max_jobs=32, extra=INDEX)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def chromium(daemon):
    with browser() as running:
        yield running


@pytest.fixture(scope="module")
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.errors = errors
    yield tab
    assert not errors, errors
    context.close()


def show(page, daemon: Daemon, where: str, ready: str) -> None:
    page.goto(f"{daemon.web}/{where}")
    page.wait_for_selector(f'main[data-ready="{ready}"]', timeout=20_000)


def act(page, reason: str = "", press: bool = True, **fields: str) -> None:
    """Fill the open action dialog (its fields, the reason) and press its
    button (unless not ``press``); the caller waits for what comes of it."""
    dialog = page.locator("#action-dialog")
    dialog.wait_for(state="visible", timeout=DEADLINE)
    for name, value in fields.items():
        field = dialog.locator(f'[name="{name}"]')
        if field.evaluate("(el) => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    dialog.locator('input[name="reason"]').fill(reason)
    if press:
        dialog.locator("[data-confirm]").click()


def acted(page) -> None:
    """The action dialog closed: the daemon took the action."""
    page.locator("#action-dialog").wait_for(state="hidden", timeout=DEADLINE)


def screenshot(page, name: str) -> None:
    data = save_screenshot(page, IMAGES / f"console-{name}.png")
    assert png_colours(data) >= LEAST_COLOURS, f"the screenshot of {name} looks blank"


def register_files() -> list:
    return [
        {"product": "arome", "reference_time": "2026-11-28T06:00:00Z", "backend": "lustre-a", "format": "netcdf",
         "url": f"file:///lustre/a/arome/arome_{i}.nc", "size": 1000 + i, "hash": f"{i:02x}" * 32}
        for i in range(2)
    ]


async def _index(api: str) -> None:
    async with connect(api) as client:
        written = (await client.call("files.register", {"files": register_files()}))["files"]
        # a consumer's copy of the first file, as muppet-sync registers it
        await client.call("files.register", {"files": [{
            "product": "arome", "reference_time": "2026-11-28T06:00:00Z", "backend": "thredds-1",
            "format": "netcdf", "url": "https://thredds-1.example/fileServer/arome/arome_0.nc", "size": 1000,
            "hash": "00" * 32, "data_id": written[0]["data_id"], "peer": "thredds-1.example:6881",
            "info_hash": "ab" * 20}]})


def test_the_page_says_where_the_api_is_and_its_files_revalidate(daemon):
    with urllib.request.urlopen(f"{daemon.web}/") as answer:
        page = answer.read().decode()
    facts = re.search(r'<meta name="muppet-console" content="([^"]*)">', page)
    assert facts, "the page names the API itself: it connects without asking /console.json first"
    assert json.loads(html.unescape(facts[1]))["api"]["port"] == daemon.api_port
    with urllib.request.urlopen(f"{daemon.web}/static/run.js") as answer:
        etag = answer.headers["ETag"]
        assert "javascript" in answer.headers["Content-Type"]  # a module needs a JavaScript type
    again = urllib.request.Request(f"{daemon.web}/static/run.js", headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as unchanged:
        urllib.request.urlopen(again)
    assert unchanged.value.code == 304
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{daemon.web}/static/nothing.js")
    assert missing.value.code == 404


def test_a_run_triggered_from_the_page_changes_live(page, daemon):
    show(page, daemon, "#/", "overview")
    row = page.locator('tr[data-pipeline="live"]')
    row.locator('button[data-action="trigger"]').click()
    act(page, "a test run")
    acted(page)
    made = page.locator("#flash").filter(has_text="run ")
    made.wait_for(timeout=20_000)
    run_id = int(re.search(r"run (\d+) made", made.inner_text())[1])
    show(page, daemon, f"#/run/{run_id}", "run")
    tick = page.locator('.node[data-step="tick"] .chip')
    # the colour and the word change as the job runs and ends, without a reload
    page.wait_for_selector('.node[data-step="tick"] .chip[data-state="running"]', timeout=20_000)
    assert "run" in tick.inner_text()
    page.wait_for_selector('.node[data-step="tick"] .chip[data-state="succeeded"]', timeout=20_000)
    assert tick.inner_text().endswith("ok")
    page.wait_for_selector('.node[data-step="convert"][data-states~="running"]', timeout=20_000)
    assert "running" in page.locator('.node[data-step="convert"] .counts').inner_text()
    page.wait_for_selector('.jobrow[data-state="running"]', timeout=20_000)
    screenshot(page, "run")


def test_a_job_page_follows_its_log_as_it_grows(page, daemon):
    run_id = int(daemon.muppet("trigger", "live", "--reference-time", "2026-11-28T00:00:00Z"))
    show(page, daemon, f"#/run/{run_id}", "run")
    chip = page.locator('.node[data-step="tick"] .chip[data-state="running"]')
    chip.wait_for(timeout=20_000)
    chip.click()
    page.wait_for_selector('main[data-ready="job"]', timeout=20_000)
    log = page.locator("pre.log")
    page.wait_for_function("() => document.querySelector('pre.log').textContent.includes('tick 1\\n')", timeout=20_000)
    early = log.inner_text()
    assert "tick 40" not in early, "the page should show the log while the job runs"
    page.wait_for_function("() => document.querySelector('pre.log').textContent.includes('tick 40\\n')",
                           timeout=30_000)
    assert log.inner_text().startswith(early.rstrip("\n")), "the log grew at its end"
    page.wait_for_selector('[data-role="log-state"][data-more="false"]', timeout=20_000)
    page.wait_for_selector('h2[data-state="succeeded"]', timeout=20_000)
    assert page.locator('dd[data-fact="exit code"]').inner_text() == "0"


def test_a_job_is_killed_from_its_page(page, daemon):
    run_id = int(daemon.muppet("trigger", "live", "--reference-time", "2026-11-27T00:00:00Z"))

    def running_convert() -> dict | None:
        jobs = json.loads(daemon.muppet("jobs", str(run_id), "--json"))
        return next((j for j in jobs if j["step"] == "convert" and j["state"] == "running"), None)

    from waiting import wait_until

    job = wait_until(running_convert, 60, "a convert job running")
    show(page, daemon, f"#/job/{job['id']}", "job")
    page.wait_for_function("() => document.querySelector('pre.log').textContent.includes('converting')",
                           timeout=20_000)
    screenshot(page, "job")
    page.locator('button[data-action="kill"]').click()
    # a destructive action says so before anything happens
    assert page.locator('#action-dialog[data-destructive="true"]').is_visible()
    act(page, "stuck on lustre")
    page.wait_for_selector('h2[data-state="killed"]', timeout=20_000)
    assert page.locator('dd[data-fact="reason"]').inner_text() == "killed by operator: stuck on lustre"
    jobs = json.loads(daemon.muppet("jobs", str(run_id), "--json"))
    assert next(j for j in jobs if j["id"] == job["id"])["state"] == "killed"


def test_a_step_is_bypassed_and_the_run_killed_with_reasons(page, daemon):
    run_id = int(daemon.muppet("trigger", "steer"))
    show(page, daemon, f"#/run/{run_id}", "run")
    # the page started on a run, not the overview: main.js's first calls are the run's
    page.reload()
    page.wait_for_selector('main[data-ready="run"]', timeout=DEADLINE)
    page.wait_for_selector('.node[data-step="gate"] .chip[data-state="running"]', timeout=DEADLINE)
    assert not page.locator("main .error").count(), page.locator("main").inner_text()
    # a refusal stays in the dialog, in the API's words: what to do instead
    page.locator('button[data-action="bypass"]').click()
    act(page, "model down", step="gate")
    problem = page.locator("#action-dialog .problem")
    problem.wait_for(state="visible", timeout=DEADLINE)
    assert "step gate has jobs running" in problem.inner_text()
    assert "kill them first, then bypass" in problem.inner_text()
    act(page, "model down", step="make")
    acted(page)
    page.wait_for_function(
        "() => document.querySelectorAll('.node[data-step=\"make\"] .chip[data-state=\"bypassed\"]').length === 2",
        timeout=DEADLINE)
    bypassed = page.locator('.jobrow[data-state="bypassed"] .reason').first
    bypassed.wait_for(timeout=DEADLINE)
    assert bypassed.inner_text() == "bypassed by operator: model down"
    # the whole run: its running gate is killed, with the reason given
    page.locator('button[data-action="kill-run"]').click()
    assert page.locator('#action-dialog[data-destructive="true"]').is_visible()
    act(page, "bad input", press=False)
    screenshot(page, "action")
    page.locator("#action-dialog [data-confirm]").click()
    acted(page)
    page.wait_for_selector('.run-header .state[data-state="failed"]', timeout=DEADLINE)
    page.wait_for_selector('.jobrow[data-state="killed"]', timeout=DEADLINE)
    assert page.locator('.jobrow[data-state="killed"] .reason').inner_text() == "killed by operator: bad input"
    jobs = json.loads(daemon.muppet("jobs", str(run_id), "--json"))
    assert sorted(j["state"] for j in jobs) == ["bypassed", "bypassed", "killed", "succeeded"]


def test_a_product_update_is_requested_from_the_index(page, daemon):
    show(page, daemon, "#/index", "index")
    page.locator('tr[data-product="arome"] button[data-action="request"]').click()
    act(page, "THREDDS lost the 06 files", reference_time="2026-11-29T06:00:00Z")
    acted(page)
    page.locator("#flash").filter(has_text="run ").wait_for(timeout=DEADLINE)
    done = page.locator('table.requests tr[data-state="done"]').first
    done.wait_for(timeout=DEADLINE)
    assert "THREDDS lost the 06 files" in done.inner_text()
    assert "maker" in done.inner_text()
    run_id = int(re.search(r"run (\d+)", done.inner_text())[1])
    runs = json.loads(daemon.muppet("runs", "--pipeline", "maker", "--json"))
    assert [(r["id"], r["cause"]) for r in runs] == [(run_id, "request")]


def test_every_page_and_its_screenshot(page, daemon):
    trio.run(_index, daemon.api)
    daemon.muppet("trigger", "archive")
    show(page, daemon, "#/", "overview")
    page.wait_for_selector('tr[data-pipeline="archive"][data-attention="true"]', timeout=20_000)
    # those that need attention come first
    first = page.locator("section.pipelines tbody tr").first
    assert first.get_attribute("data-attention") == "true"
    show(page, daemon, "#/runs?pipeline=live", "runs")
    assert page.locator("table.runs tbody tr").count() >= 3
    screenshot(page, "runs")
    show(page, daemon, "#/runs?reference=2026-11-28", "runs")
    page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr[data-run-id]').length === 1")
    show(page, daemon, "#/index", "index")
    show(page, daemon, "#/index/arome", "index")
    page.locator('tr[data-instance-id] a').first.click()
    page.wait_for_selector('li[data-backend="thredds-1"]', timeout=20_000)
    assert "seeded by thredds-1.example:6881" in page.locator('li[data-backend="thredds-1"]').inner_text()
    screenshot(page, "index")


def test_a_pause_and_a_drain_show_on_the_pages(page, daemon):
    show(page, daemon, "#/", "overview")
    page.locator('tr[data-pipeline="archive"] button[data-action="pause"]').click()
    act(page, "ECMWF late")
    acted(page)
    paused = page.locator('tr[data-pipeline="archive"][data-paused="true"] p.paused')
    paused.wait_for(timeout=DEADLINE)
    assert re.fullmatch(r"paused by local since \S+ \S+Z: ECMWF late", paused.inner_text()), paused.inner_text()
    page.locator('button[data-action="drain"]').click()
    assert page.locator('#action-dialog[data-destructive="true"]').is_visible()
    act(page, "Slurm upgrade")
    acted(page)
    banner = page.locator("#draining")
    banner.wait_for(state="visible", timeout=DEADLINE)
    assert "Slurm upgrade" in banner.inner_text() and "by local since" in banner.inner_text()
    screenshot(page, "overview")
    # a job of a paused pipeline says why it waits, in the scheduler's words
    run_id = int(daemon.muppet("trigger", "archive", "--reference-time", "2026-11-02T00:00:00Z"))
    show(page, daemon, f"#/run/{run_id}", "run")
    page.wait_for_function("() => document.querySelector('.why').textContent.includes('muppet')", timeout=DEADLINE)
    assert banner.is_visible(), "the drain shows on every page"
    # lifting both: the banner's own button, and Resume
    banner.locator('button[data-action="undrain"]').click()
    act(page, "Slurm is back")
    acted(page)
    banner.wait_for(state="hidden", timeout=DEADLINE)
    show(page, daemon, "#/", "overview")
    page.locator('tr[data-pipeline="archive"] button[data-action="resume"]').click()
    act(page)
    acted(page)
    page.wait_for_selector('tr[data-pipeline="archive"][data-paused="false"]', timeout=DEADLINE)
    # the operators' events in words: who did what, and why
    show(page, daemon, "#/events", "events")
    said = page.locator('ol.events li[data-kind="operator"]').all_inner_texts()
    assert any("local paused pipeline archive: ECMWF late" in line for line in said), said
    assert any("local drained the daemon: no new job starts: Slurm upgrade" in line for line in said), said
    assert any("local resumed pipeline archive (no reason given)" in line for line in said), said
    assert any(re.search(r"local killed run \d+ \(job \d+\): bad input", line) for line in said), said
    assert any(re.search(r"local killed job \d+ of run \d+: stuck on lustre", line) for line in said), said
    before = page.locator("ol.events li").count()
    daemon.muppet("trigger", "archive", "--reference-time", "2026-11-01T00:00:00Z")
    page.wait_for_function(f"() => document.querySelectorAll('ol.events li').length > {before}", timeout=20_000)
    screenshot(page, "events")


def test_a_write_token_may_pause_but_not_drain(chromium, tmp_path):
    secret = "for-the-on-call-desk"
    guarded = Daemon(tmp_path, {"live": PIPELINES["live"]}, tokens={"oncall": ("write", secret)})
    guarded.start()
    try:
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        tab = context.new_page()
        tab.goto(f"{guarded.web}/")
        asked = tab.locator("#token-dialog")
        asked.wait_for(state="visible", timeout=DEADLINE)
        asked.locator('input[name="token"]').fill(secret)
        asked.locator('button[value="ok"]').click()
        tab.wait_for_selector('main[data-ready="overview"]', timeout=DEADLINE)
        assert tab.locator("#who").inner_text() == "role: write"
        assert tab.locator('tr[data-pipeline="live"] button[data-action="pause"]').is_enabled()
        drain = tab.locator('button[data-action="drain"]')
        assert drain.is_disabled() and drain.get_attribute("title") == "needs an admin token"
        context.close()
    finally:
        guarded.stop()
