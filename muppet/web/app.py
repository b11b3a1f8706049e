"""The ASGI app the daemon's web server serves (starlette, on hypercorn's
trio worker: ``muppet/web/task.py``).

Routes:

* ``/``: the operator's console, one HTML page and its JavaScript modules
  and style sheet under ``/static/`` (shipped in the package: the page works
  with no internet). The page holds no data: it talks to the websocket API,
  as the ``muppet`` command does (docs/console.md). Where that API is comes
  in the page itself (a ``<meta>``), so that the page connects without
  asking first; the files are read once and served from memory, each with
  an ETag (a reload of the page costs a 304 per file);
* ``/console.json``: where that API is and whether it wants a token (the
  same as the page's ``<meta>``);
* ``/metrics``: Prometheus's text format (docs/operations.md, "Metrics");
* ``/healthz``: 200 or 503 with a JSON reason (docs/operations.md,
  "Health check").

Everything that blocks runs in worker threads: the database reads here
through ``trio.to_thread``. The page's files are read once, when the app
is made.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import importlib.resources
import mimetypes
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import messages, summary
from ..codec import compact_json
from ..db.health import DatabaseHealth
from ..db.store import DatabaseUnavailable, Store, StoreError, open_store
from ..metrics import DatabaseCounts, Metrics
from ..model import Config
from .health import PROBE_TIMEOUT, Check, judge, tasks_check

#: the page and its assets, package data of muppet.web
STATIC = importlib.resources.files("muppet.web") / "static"

#: what the page may load and talk to: only this server and a websocket
#: (the API is on another port, so 'self' does not cover it)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _version() -> str:
    try:
        return importlib.metadata.version("muppet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class DatabaseReader:
    """The web server's own connection to the database, opened when first
    needed and used by one worker thread at a time: the daemon's other
    connections belong to the tasks that opened them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store: Store | None = None
        self.lock = trio.Lock()

    async def run(self, fn: Callable[[Store], Any]) -> Any:
        """``fn(store)`` in a worker thread; DatabaseUnavailable when the
        database does not answer."""
        async with self.lock:
            return await trio.to_thread.run_sync(self._call, fn)

    def _call(self, fn: Callable[[Store], Any]) -> Any:
        if self.store is None:
            try:
                self.store = open_store(self.url)
            except StoreError as exc:
                raise DatabaseUnavailable(str(exc)) from exc
        return fn(self.store)

    async def aclose(self) -> None:
        async with self.lock:
            if self.store is not None:
                await trio.to_thread.run_sync(self.store.close)
                self.store = None


@attrs.define
class WebState:
    """What the routes need: the daemon's configuration, its shared
    database health and metrics, the scheduler's inbox (for the health
    probe), the names of the daemon's running tasks, and where the API is."""

    config: Config
    health: DatabaseHealth
    metrics: Metrics
    scheduler: trio.MemorySendChannel[messages.Asked]
    running_tasks: Callable[[], frozenset[str]]
    api_port: int
    reader: DatabaseReader
    #: the tasks that must be running, as seen once the daemon was up
    expected_tasks: frozenset[str] | None = None


def _database_counts(store: Store) -> DatabaseCounts:
    return DatabaseCounts(
        jobs=summary.jobs_by_pipeline_and_state(store),
        runs=summary.runs_by_pipeline_and_state(store),
        active=summary.active_by_executor(store),
        index=summary.index_size(store),
    )


async def _metrics(state: WebState, request: Request) -> Response:
    # the figures the database holds are read for each scrape; while it is
    # away they are left out (muppet_database_up says why)
    try:
        counts = await state.reader.run(_database_counts)
    except DatabaseUnavailable as exc:
        state.health.failed(exc)
        counts = None
    else:
        state.health.answered()
    state.metrics.set_database_counts(counts)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _database_check(state: WebState) -> Check:
    if not state.health.available:
        return Check("database", False, f"unavailable for {state.health.outage_seconds():.0f} s: "
                                        f"{state.health.cause}")
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            await state.reader.run(summary.ping)
        except DatabaseUnavailable as exc:
            state.health.failed(exc)
            return Check("database", False, f"unavailable: {exc}")
        state.health.answered()
        return Check("database", True, f"{state.health.name} answers")
    return Check("database", False, f"{state.health.name} did not answer within {PROBE_TIMEOUT:g} s")


async def _scheduler_check(state: WebState) -> Check:
    send, receive = trio.open_memory_channel[messages.Reply](1)
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            await state.scheduler.send(messages.Asked(messages.WhyWaiting(()), send))
            await receive.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            return Check("scheduler", False, "not running")
        return Check("scheduler", True, "answers")
    return Check("scheduler", False, f"did not answer within {PROBE_TIMEOUT:g} s")


async def _healthz(state: WebState, request: Request) -> Response:
    checks: dict[str, Check] = {}

    async def probe(name: str, check: Callable[[WebState], Any]) -> None:
        checks[name] = await check(state)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, "database", _database_check)
        nursery.start_soon(probe, "scheduler", _scheduler_check)
    running = state.running_tasks()
    expected = state.expected_tasks if state.expected_tasks is not None else running
    status, body = judge([checks["database"], checks["scheduler"], tasks_check(expected, running)])
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _console_info(state: WebState) -> dict[str, Any]:
    """Where the API is, whether it wants a token, the version: what the
    page needs before it can connect."""
    api = state.config.api
    host: str | None = api.host
    if host in ("", "0.0.0.0", "::"):
        host = None  # any address: the page uses the one it was loaded from
    return {
        "api": {"scheme": api.scheme, "host": host, "port": state.api_port},
        "tokens": bool(api.tokens_file),
        "open_reads": api.open_reads,
        "version": _version(),
    }


async def _console_json(state: WebState, request: Request) -> Response:
    return JSONResponse(_console_info(state), headers={"Cache-Control": "no-store"})


@attrs.frozen
class Asset:
    """A file of the page, read once: its bytes, type and ETag."""

    body: bytes
    media_type: str
    etag: str


def _load_assets() -> dict[str, Asset]:
    """Every file of ``STATIC``, in memory: about 100 KiB, and serving from
    memory spares each request the worker-thread hops of a file read (they
    made the first paint wait on a busy daemon, bench/console.py)."""
    assets = {}
    for entry in STATIC.iterdir():
        if not entry.is_file():
            continue
        body = entry.read_bytes()
        media_type = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type.endswith(("javascript", "json", "svg+xml")):
            media_type += "; charset=utf-8"
        assets[entry.name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


#: where the page's <meta> with the console's facts goes
META_MARK = "<!-- console facts -->"


def _asset_response(request: Request, asset: Asset, body: bytes | None = None) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body if body is None else body, media_type=asset.media_type, headers=headers)


def _page(state: WebState, assets: dict[str, Asset]) -> Callable[[Request], Any]:
    template = assets["index.html"]

    async def page(request: Request) -> Response:
        info = compact_json(_console_info(state))
        meta = f'<meta name="muppet-console" content="{html.escape(info, quote=True)}">'
        body = template.body.decode().replace(META_MARK, meta, 1).encode()
        # the ETag covers the facts too: a reload that changes them is seen
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        return _asset_response(request, attrs.evolve(template, etag=etag), body)

    return page


def _static(assets: dict[str, Asset]) -> Callable[[Request], Any]:
    async def static(request: Request) -> Response:
        asset = assets.get(request.path_params["name"])
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return _asset_response(request, asset)

    return static


class _SecurityHeaders:
    """Every answer says what the page may load (Content-Security-Policy)
    and that it must not be framed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def make_app(state: WebState) -> Any:
    """The ASGI app for one daemon."""
    assets = _load_assets()
    app = Starlette(routes=[
        Route("/", _page(state, assets)),
        Route("/console.json", partial(_console_json, state)),
        Route("/metrics", partial(_metrics, state)),
        Route("/healthz", partial(_healthz, state)),
        Route("/static/{name:str}", _static(assets)),
    ])
    return _SecurityHeaders(app)
