"""/metrics and /healthz of muppet-sync seed and fetch (docs/sync.md,
"Metrics and health check"): a real daemon, a real seeder and consumer (their
own processes, real libtorrent), scraped over HTTP and parsed with
prometheus_client's own parser; the health check through a real stop and
start of the daemon."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from test_api import free_port  # tests/ is on sys.path
from test_metrics import get, scrape
from test_sync_e2e import REF, SECRET, Cluster, _all_there

from muppet.api.client import connect

pytestmark = pytest.mark.timeout(240)

#: bytes of the file moved: a few pieces, a fraction of a second on loopback
SIZE = 3_000_000

DOCS = Path(__file__).resolve().parent.parent / "docs"


async def health(url: str) -> tuple[int, dict] | None:
    """/healthz's status and body; None while nothing listens yet."""
    try:
        status, text = await trio.to_thread.run_sync(get, f"{url}/healthz")
    except OSError:
        return None
    return status, json.loads(text)


async def health_is(url: str, wanted: int) -> dict | None:
    found = await health(url)
    return found[1] if found is not None and found[0] == wanted else None


async def figures(url: str) -> dict:
    """Every sample of /metrics (name -> {sorted labels: value}); {} while
    nothing listens yet."""
    try:
        return await scrape(url)
    except OSError:
        return {}


def one(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


async def register(client, cluster: Cluster, name: str, *, wrong_hash: bool = False) -> int:
    """A file on the seeder's storage, registered in the index: its data id."""
    path = cluster.tmp / "lustre" / name
    data = os.urandom(SIZE)
    await trio.Path(path.parent).mkdir(exist_ok=True)
    await trio.Path(path).write_bytes(data)
    digest = hashlib.sha256(b"not " + data if wrong_hash else data).hexdigest()
    registered = await client.call("files.register", {"files": [{
        "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
        "url": f"file://{path}", "size": SIZE, "hash": digest,
    }]})
    data_id: int = registered["files"][0]["data_id"]
    return data_id


async def test_the_figures_move_with_a_transfer_and_healthz_follows_the_daemon(tmp_path):
    cluster = Cluster(tmp_path)
    seed = f"http://127.0.0.1:{free_port()}"
    fetch = f"http://127.0.0.1:{free_port()}"
    try:
        await cluster.start_daemon()
        await cluster.start_seed(metrics=int(seed.rsplit(":", 1)[1]))
        await cluster.start_fetch("c1", metrics=int(fetch.rsplit(":", 1)[1]))
        for url in (seed, fetch):
            body = await cluster.wait(partial(health_is, url, 200), f"{url}/healthz 200")
            assert body["status"] == "ok" and body["reasons"] == []
            assert set(body["checks"]) == {"index", "events", "tasks"}
            assert body["checks"]["tasks"]["detail"] == "6 running", body

        before = await figures(fetch)
        assert one(before, "muppet_sync_info", role="fetch", version=_any_version(before)) == 1
        assert one(before, "muppet_sync_index_up") == 1
        assert one(before, "muppet_sync_files_placed_total") == 0
        assert one(before, "muppet_sync_registration_to_placed_seconds_count") == 0
        assert one(before, "muppet_sync_download_bytes_total") == 0
        for state in ("queued", "downloading", "seeding", "expired", "error"):
            assert one(before, "muppet_sync_files", state=state) == 0
        seeded = await figures(seed)
        assert one(seeded, "muppet_sync_info", role="seed", version=_any_version(seeded)) == 1
        assert "muppet_sync_files_placed_total" not in seeded  # the consumer's own figures
        assert one(seeded, "muppet_sync_upload_bytes_total") == 0

        async with connect(cluster.api, token=SECRET) as client:
            registered = datetime.now(UTC)
            await register(client, cluster, "one.nc")

            async def placed():
                m = await figures(fetch)
                return m if one(m, "muppet_sync_files_placed_total") == 1 else None

            after = await cluster.wait(placed, "the consumer counting one file placed")
            waited = (datetime.now(UTC) - registered).total_seconds()
            assert await _all_there(tmp_path / "c1" / "data" / "arome" / "20261201T00", ["one.nc"])
            assert one(after, "muppet_sync_registration_to_placed_seconds_count") == 1
            assert 0 < one(after, "muppet_sync_registration_to_placed_seconds_sum") <= waited + 1
            assert one(after, "muppet_sync_download_bytes_total") >= SIZE
            assert one(after, "muppet_sync_files", state="seeding") == 1
            assert one(after, "muppet_sync_torrents", state="seeding") == 1
            assert one(after, "muppet_sync_verification_failures_total") == 0

            async def uploaded():
                m = await figures(seed)
                return m if (one(m, "muppet_sync_upload_bytes_total") or 0) >= SIZE else None

            seeded = await cluster.wait(uploaded, "the seeder counting the file's bytes sent")
            assert one(seeded, "muppet_sync_files", state="seeding") == 1
            assert one(seeded, "muppet_sync_torrents", state="seeding") == 1

            # a file whose bytes are not what the index says: downloaded,
            # refused by the SHA-256 check, counted, never placed
            await register(client, cluster, "bad.nc", wrong_hash=True)

            async def refused():
                # the failure is counted at the check, and the file shows
                # "error" once the download is removed (sync/fetch.py): a
                # scrape in between has the one without the other
                m = await figures(fetch)
                counted = one(m, "muppet_sync_verification_failures_total") == 1
                return m if counted and one(m, "muppet_sync_files", state="error") == 1 else None

            after = await cluster.wait(refused, "the consumer counting a verification failure and the file in error")
            assert await documented_names() == scraped_names(await trio.to_thread.run_sync(get_text, fetch))
            assert one(after, "muppet_sync_files", state="error") == 1
            assert one(after, "muppet_sync_files_placed_total") == 1
            assert not await trio.Path(tmp_path / "c1" / "data" / "arome" / "20261201T00" / "bad.nc").exists()

        # the daemon stops: both say why with 503, and the index is down in /metrics
        await cluster.stop("daemon")
        for url in (seed, fetch):
            body = await cluster.wait(partial(health_is, url, 503), f"{url}/healthz 503", timeout=30)
            assert body["status"] == "unavailable", body
            reasons = body["reasons"]
            assert any(r.startswith(f"index: cannot reach the MUPPET daemon at {cluster.api}") for r in reasons), body
            # the stream's own last problem: its connection closed, or refused since
            assert any(r.startswith("events: not subscribed: ") for r in reasons), body
            assert body["checks"]["tasks"]["ok"] is True, body
        down = await figures(fetch)
        assert one(down, "muppet_sync_index_up") == 0
        assert one(down, "muppet_sync_index_outages_total") == 1

        # and back: 200 again once the event stream is subscribed again
        await cluster.start_daemon()
        for url in (seed, fetch):
            await cluster.wait(partial(health_is, url, 200), f"{url}/healthz 200 after the restart", timeout=90)
        assert one(await figures(fetch), "muppet_sync_index_up") == 1
    finally:
        await cluster.stop_all()


async def documented_names() -> set[str]:
    """The metrics docs/sync.md's table lists."""
    text = await trio.Path(DOCS / "sync.md").read_text()
    return set(re.findall(r"^\| `(muppet_sync_[a-z_]+)` \|", text, re.MULTILINE))


def get_text(url: str) -> str:
    status, text = get(f"{url}/metrics")
    assert status == 200, text
    return text


def scraped_names(text: str) -> set[str]:
    """The metrics of a /metrics page, as a reader of it names them (a
    counter with its _total, no _created companions)."""
    names = set()
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def _any_version(samples: dict) -> str:
    """The version label muppet_sync_info carries (whatever is installed)."""
    (labels,) = samples["muppet_sync_info"]
    return dict(labels)["version"]
