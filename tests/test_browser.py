"""The console in a real browser (docs/console.md): Debian's chromium driven
by Playwright against a real `muppet daemon` process. Trigger a run from the
page and watch its jobs change state live, open a job and watch its log
grow, kill a job, and keep screenshots of every page in docs/images/ (each
checked not to be blank)."""

from __future__ import annotations

import json
import re
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
}

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
def page(daemon):
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on("dialog", lambda dialog: dialog.accept())
        tab.errors = errors
        yield tab
        assert not errors, errors
        context.close()


def show(page, daemon: Daemon, where: str, ready: str) -> None:
    page.goto(f"{daemon.web}/{where}")
    page.wait_for_selector(f'main[data-ready="{ready}"]', timeout=20_000)


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


def test_a_run_triggered_from_the_page_changes_live(page, daemon):
    show(page, daemon, "#/", "overview")
    row = page.locator('tr[data-pipeline="live"]')
    row.locator('button[data-action="trigger"]').click()
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
    page.wait_for_selector('h2[data-state="killed"]', timeout=20_000)
    assert page.locator('dd[data-fact="reason"]').inner_text() == "killed by operator"
    jobs = json.loads(daemon.muppet("jobs", str(run_id), "--json"))
    assert next(j for j in jobs if j["id"] == job["id"])["state"] == "killed"


def test_every_page_and_its_screenshot(page, daemon):
    trio.run(_index, daemon.api)
    daemon.muppet("trigger", "archive")
    show(page, daemon, "#/", "overview")
    page.wait_for_selector('tr[data-pipeline="archive"][data-attention="true"]', timeout=20_000)
    # those that need attention come first
    first = page.locator("section.pipelines tbody tr").first
    assert first.get_attribute("data-attention") == "true"
    screenshot(page, "overview")
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
    show(page, daemon, "#/events", "events")
    before = page.locator("ol.events li").count()
    daemon.muppet("trigger", "archive", "--reference-time", "2026-11-01T00:00:00Z")
    page.wait_for_function(f"() => document.querySelectorAll('ol.events li').length > {before}", timeout=20_000)
    screenshot(page, "events")
