"""How many index queries per second the daemon's API answers, beside the
echo ceiling of the same websocket stack (the MUPPET design's target:
thousands of queries per second from one daemon; docs/index.md, "Speed").

For each database (SQLite, PostgreSQL 15):
1. an index of realistic size is loaded straight into the tables: 50
   products x 4 instances a day x 30 days x 60 files (360,000 data instances,
   every instance complete), plus, per product, one newer instance still
   incomplete (30 of its 60 files), so that "latest complete" is not simply
   "latest";
2. the real daemon (`muppet daemon --config X`, its own process) serves it;
3. 50 websocket clients in 2 client processes (bench/index_client.py) send
   JSON-RPC batches for SECONDS each, in these runs:
   - mix: "instances.latest {product: P, complete: true}" over random P and
     "files.list {instance_id: I, backend: lustre-a}" over random I among the
     newest 8 complete instances of each product (half and half by default,
     --files-share), batched and unbatched;
   - compact: the mix with files.list's ``fields`` (COMPACT_FIELDS: what
     a consumer needs to fetch a file), batched and unbatched: the same
     queries with smaller answers, printed beside the whole ones;
   - latest, files: each of the two alone, batched;
   - echo: daemon.echo {data: ~200 bytes} through the same daemon (its
     JSON-RPC ceiling), batched and unbatched;
   - plain: the daemon.echo messages sent to a bare trio-websocket echo
     server (no JSON-RPC at all, its own process): the transport's ceiling;
   - bulk: the same bare server answering each message with as many bytes as
     the mix's answers averaged (a files.list answer of 60 files is ~37 kB):
     the transport's ceiling for answers of that size.
   Every call of a batch counts as one query; a sample of the answers is
   checked in full (see bench/index_client.py).
Before the runs, each distinct query is asked once (the cold pass: these go
to the database; later ones are answered from the API's cache of hot answers,
which the event stream keeps current).

Prints the load time, the cold pass, the CPU split of each run (daemon,
clients, echo server, interrupts, other programs on the box), and the table
of queries per second with their share of the ceilings. Targets: >= 10,000
queries/s and >= 60% of the echo ceiling (the batched mix, whole files and compact).

    .venv/bin/python bench/index.py [--backends sqlite,postgres] [--seconds 10]
        [--batch 20] [--rounds 1] [--quick] [--files-share 0.5] [--profile]

--rounds N: the batched mix, the compact mix and the batched echo N times
in turn; each round's share is of its own echo, and the targets are judged
on the median round (on a machine shared with other work the load moves by
tens of percent between runs).

--quick: 5 products x 2 days, 2-second runs, only mix (batched and not),
echo, plain and bulk batched: checks the script in under a minute.
--profile: runs the daemon under cProfile for the batched query run only and
prints its 30 most expensive functions (cProfile slows the daemon down).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
import trio_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from muppet.config import load_config  # noqa: E402
from muppet.db import writes  # noqa: E402
from muppet.db.store import open_store  # noqa: E402
from muppet.messages import DefineIndex  # noqa: E402

PYTHON = sys.executable
CLIENT = str(ROOT / "bench" / "index_client.py")
BACKEND = "lustre-a"
FORMAT = "netcdf"
FILE_COUNT = 60
RECENT = 8  # instances per product the files.list queries pick from
#: files.list's fields in the compact mix (docs/api.md, "Reads")
COMPACT_FIELDS = ["id", "url", "size", "hash"]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the configuration and the index ---------------------------------------------


def write_config(root: Path, database: str, port: int, products: int) -> Path:
    lines = [
        "[daemon]",
        f'database = "{database}"',
        f'state_dir = "{root / "state"}"',
        f'output_dir = "{root / "out"}"',
        "pipelines = []",
        "[api]",
        f'listen = "127.0.0.1:{port}"',
        f"[formats.{FORMAT}]",
        'name = "NetCDF"',
        f"[backends.{BACKEND}]",
        'name = "Lustre A"',
        'url = "file:///lustre/a"',
    ]
    for n in range(products):
        lines += [
            f"[products.p{n:02d}]",
            f'name = "Bench product {n}"',
            f"file_count = {FILE_COUNT}",
            "operational = true",
            'projection = "lambert"',
            "time_step_hours = 1",
        ]
    path = root / "muppet.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_index(config_path: Path, days: int) -> dict:
    """Fill the index tables with executemany (SQLite) or COPY (PostgreSQL)
    in one transaction; returns what the clients ask for and expect."""
    config = load_config(str(config_path))
    url = config.daemon.database
    store = open_store(url)
    try:
        # the daemon's own DefineIndex at start then finds nothing to change
        writes.write(store, [DefineIndex(
            products=tuple(config.products.values()),
            formats=tuple(config.formats.values()),
            backends=tuple(config.backends.values()),
        )])
        instances, data, files = [], [], []
        expect_latest: dict[str, str] = {}
        recent: list[list] = []
        variables = json.dumps(["air_temperature_2m", "precipitation_amount", "wind_speed_10m"])
        rng = random.Random(1)
        per_day = 4
        # the newest reference time is the last 6-hour boundary, and every
        # file expires well after the run: the daemon's expiry task must find
        # nothing to delete while the clients read
        now = datetime.now(UTC)
        newest = now.replace(hour=now.hour - now.hour % 6, minute=0, second=0, microsecond=0)
        start = newest - timedelta(days=days)
        expires = iso(newest + timedelta(days=60))
        instance_id = data_id = 0
        for slug in sorted(config.products):
            times = [start + timedelta(hours=6 * k) for k in range(days * per_day + 1)]
            for k, reference_time in enumerate(times):
                complete = k < len(times) - 1  # the newest is still arriving
                instance_id += 1
                made = reference_time.timestamp() + 2 * 3600
                instances.append((instance_id, slug, iso(reference_time), 1, made,
                                  made + 3600 if complete else None))
                stamp = reference_time.strftime("%Y%m%dT%H")
                for f in range(FILE_COUNT if complete else FILE_COUNT // 2):
                    data_id += 1
                    name = f"{slug}_{stamp}_{f:02d}.nc"
                    data.append((data_id, instance_id, name, iso(reference_time + timedelta(hours=f)),
                                 iso(reference_time + timedelta(hours=f + 1)), variables, made))
                    files.append((
                        data_id, data_id, instance_id, f"file:///lustre/a/{slug}/{name}", FORMAT,
                        BACKEND, rng.randrange(10**6, 10**9), "sha256", f"{rng.getrandbits(256):064x}",
                        expires, 0, 0, made,
                    ))
                if complete and k >= len(times) - 1 - RECENT:
                    recent.append([instance_id, slug])
            expect_latest[slug] = iso(times[-2])
        started = time.perf_counter()
        columns = {
            "instances": "id, product, reference_time, version, created_at, completed_at",
            "data": "id, instance_id, name, time_begin, time_end, variables, created_at",
            "data_instances": "id, data_id, instance_id, url, format, backend, size, hash_type, hash,"
                              " expires, deleted, partial, created_at",
        }
        rows = {"instances": instances, "data": data, "data_instances": files}
        conn = store._connection()
        if store.kind == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            for table, cols in columns.items():
                marks = ", ".join("?" for _ in cols.split(","))
                conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows[table])
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
        else:
            with conn.transaction():
                with conn.cursor() as cur:
                    for table, cols in columns.items():
                        with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                            for row in rows[table]:
                                copy.write_row(row)
                    # an identity column's sequence does not follow explicit ids
                    for table in columns:
                        cur.execute(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
                            f" WHERE pg_get_serial_sequence('{table}', 'id') IS NOT NULL"
                        )
            conn.execute("ANALYZE")
        load_seconds = time.perf_counter() - started
    finally:
        store.close()
    return {
        "products": expect_latest,
        "instances": recent,
        "counts": (len(instances), len(data), len(files)),
        "load_seconds": load_seconds,
    }


# --- processes and CPU -------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, total, interrupts) CPU seconds of the whole machine so far;
    interrupts (irq + softirq: loopback TCP is largely softirq work) are part
    of busy but charged to no process."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK, (values[5] + values[6]) / TICK


async def _status(url: str) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message('{"jsonrpc":"2.0","method":"daemon.status","id":1}')
        answer = json.loads(await ws.get_message())
        if "result" not in answer:
            raise RuntimeError(f"daemon.status: {answer}")


def wait_until_answers(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            trio.run(_status, url)
            return
        except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the daemon did not answer within {timeout:g} s ({e}):\n{log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.2)


def start_daemon(config_path: Path, root: Path, profile: Path | None) -> subprocess.Popen:
    log = root / "daemon.log"
    if profile is None:
        argv = [str(ROOT / ".venv" / "bin" / "muppet"), "daemon", "--config", str(config_path)]
    else:
        # `muppet daemon --config X` under cProfile; click ends with SystemExit
        code = (
            "import cProfile, sys; from muppet.cli import main;"
            f" sys.argv = ['muppet', 'daemon', '--config', {str(config_path)!r}];"
            f" cProfile.run('main()', {str(profile)!r})"
        )
        argv = [PYTHON, "-c", code]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=root)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def cold_pass(url: str, targets: dict, connections: int = 10) -> tuple[int, float]:
    """Ask every distinct query once (single calls over a few connections):
    these go to the database and fill the cache."""
    calls = [("instances.latest", {"product": p, "complete": True}) for p in targets["products"]]
    calls += [("files.list", {"instance_id": i, "backend": BACKEND}) for i, _ in targets["instances"]]
    calls += [("files.list", {"instance_id": i, "backend": BACKEND, "fields": COMPACT_FIELDS})
              for i, _ in targets["instances"]]
    queue = list(enumerate(calls))
    failures = []

    async def worker() -> None:
        async with trio_websocket.open_websocket_url(url, max_message_size=1 << 26) as ws:
            while queue:
                n, (method, params) = queue.pop()
                await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": n}))
                answer = json.loads(await ws.get_message())
                if "result" not in answer:
                    failures.append(answer)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(worker)
    if failures:
        raise RuntimeError(f"cold pass: {len(failures)} errors, the first: {failures[0]}")
    return len(calls), time.perf_counter() - started


def measure(
    args, root: Path, url: str, label: str, mix: str, batch: int, share: float, bulk_bytes: int,
    targets: dict, watch: dict[str, int],
) -> dict:
    """One run: the clients in ``args.procs`` processes for ``args.seconds``."""
    start_at = time.time() + 0.8 + args.clients * 0.01
    procs = []
    for p in range(args.procs):
        clients = args.clients // args.procs + (1 if p < args.clients % args.procs else 0)
        spec = {
            "url": url, "clients": clients, "seconds": args.seconds, "batch": batch, "mix": mix,
            "start_at": start_at, "products": targets["products"], "instances": targets["instances"],
            "backend": BACKEND, "file_count": FILE_COUNT, "files_share": share, "bulk_bytes": bulk_bytes,
            "echo": args.echo_data, "seed": p + 1, "sample_every": 20,
            "fields": COMPACT_FIELDS if label == "compact" else None,
        }
        path = root / f"spec-{p}.json"
        path.write_text(json.dumps(spec))
        procs.append(subprocess.Popen([PYTHON, CLIENT, "clients", str(path)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = {name: cpu_of(pid) for name, pid in watch.items()}
    machine_before = machine_cpu()
    time.sleep(args.seconds)
    cpu = {name: cpu_of(pid) - cpu_before[name] for name, pid in watch.items()}
    busy, total, interrupts = (a - b for a, b in zip(machine_cpu(), machine_before, strict=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60 + args.seconds)
        if proc.returncode != 0:
            raise RuntimeError(f"a client process failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    calls = sum(r["calls"] for r in results)
    bad = sum(r["bad"] for r in results)
    why = next((r["why"] for r in results if "why" in r), "")
    result = {
        "qps": calls / args.seconds,
        "calls": calls,
        "messages": sum(r["messages"] for r in results),
        "checked": sum(r["checked"] for r in results),
        "bad": bad,
        "why": why,
        "connected": sum(r["connected"] for r in results),
        "mb_in": sum(r["bytes_in"] for r in results) / 1e6,
        "cpu": {name: c / args.seconds for name, c in cpu.items()}
        | {"clients": sum(r["cpu"] / max(r["wall"], args.seconds) for r in results)},
        "machine": busy / total * os.cpu_count() if total else 0.0,
        "interrupts": interrupts / total * os.cpu_count() if total else 0.0,
    }
    # what the machine did beside this benchmark: other programs on the box
    ours = sum(result["cpu"].values()) + result["interrupts"]
    result["others"] = max(0.0, result["machine"] - ours)
    return result


# --- one database -------------------------------------------------------------------


def run_backend(args, name: str, database: str, root: Path, echo_pid: int, echo_url: str) -> list[dict]:
    port = free_port()
    config_path = write_config(root, database, port, args.products)
    print(f"\n== {name}: {database}", flush=True)
    targets = load_index(config_path, args.days)
    n_inst, n_data, n_files = targets["counts"]
    print(f"loaded {n_inst:,} instances, {n_data:,} data, {n_files:,} data instances "
          f"in {targets['load_seconds']:.1f} s", flush=True)
    profile = root / "daemon.prof" if args.profile else None
    daemon = start_daemon(config_path, root, profile)
    url = f"ws://127.0.0.1:{port}"
    rows = []
    try:
        started = time.perf_counter()
        wait_until_answers(url, daemon, root / "daemon.log")
        print(f"daemon answers daemon.status after {time.perf_counter() - started:.1f} s (pid {daemon.pid})",
              flush=True)
        count, seconds = trio.run(cold_pass, url, targets)
        print(f"cold pass: {count} distinct queries, one call per message over 10 connections, "
              f"{seconds:.2f} s ({count / seconds:,.0f} queries/s, from the database)", flush=True)
        # (label, client mix, batch, share of files.list)
        # the batched mix, whole and compact, beside the batched echo, in
        # --rounds rounds one after the other: on a shared machine the load
        # moves between runs, and each round's ratio is of runs seconds apart
        runs = [("mix", "query", args.batch, args.files_share), ("compact", "query", args.batch, args.files_share)]
        if not args.profile:
            runs.append(("echo", "echo", args.batch, 0.0))
        runs *= args.rounds
        if args.quick:
            runs += [("mix", "query", 1, args.files_share),
                     ("plain", "plain", args.batch, 0.0), ("bulk", "bulk", args.batch, 0.0)]
        elif not args.profile:
            runs += [
                ("mix", "query", 1, args.files_share),
                ("compact", "query", 1, args.files_share),
                ("latest", "query", args.batch, 0.0),
                ("files", "query", args.batch, 1.0),
                ("echo", "echo", 1, 0.0),
                ("plain", "plain", args.batch, 0.0),
                ("plain", "plain", 1, 0.0),
                ("bulk", "bulk", args.batch, 0.0),
                ("bulk", "bulk", 1, 0.0),
            ]
        answer_bytes: dict[int, int] = {}
        seen: dict[tuple[str, int], int] = {}
        for label, mix, batch, share in runs:
            round_ = seen[(label, batch)] = seen.get((label, batch), -1) + 1
            target = echo_url if mix in ("plain", "bulk") else url
            result = measure(args, root, target, label, mix, batch, share, answer_bytes.get(batch, 0), targets,
                             {"daemon": daemon.pid, "echo-server": echo_pid})
            result.update(backend=name, mix=label, batch=batch, round=round_)
            if label == "mix":
                answer_bytes[batch] = int(result["mb_in"] * 1e6 / max(1, result["messages"]))
            rows.append(result)
            cpu = result["cpu"]
            print(
                f"  {label:7} batch {batch:3}{f' round {round_ + 1}' if args.rounds > 1 and batch > 1 else ''}: "
                f"{result['qps']:>9,.0f} q/s  ({result['messages']:,} messages, "
                f"{result['mb_in'] * 1e6 / max(1, result['messages']) / 1000:,.1f} kB per answer, "
                f"{result['connected']} clients, {result['mb_in']:,.0f} MB received, "
                f"{result['checked']:,} answers checked, {result['bad']} wrong)  CPU: daemon "
                f"{cpu['daemon']:.2f}, clients {cpu['clients']:.2f}, echo server {cpu['echo-server']:.2f}, "
                f"interrupts {result['interrupts']:.2f}, other programs {result['others']:.2f}, "
                f"machine {result['machine']:.2f} of {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            if result["bad"]:
                print(f"    WRONG ANSWERS, the first: {result['why']}", flush=True)
    finally:
        stop(daemon)
    if profile is not None:
        import pstats

        print(f"\ncProfile of the daemon ({name}), 30 functions by own time:")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(30)
    return rows


def table(rows: list[dict]) -> None:
    def ceiling(row: dict, mix: str) -> float | None:
        """The ceiling ``mix`` at the row's batch: of the row's round when
        it was measured in rounds, else the first."""
        same = [other for other in rows
                if (other["backend"], other["mix"], other["batch"]) == (row["backend"], mix, row["batch"])]
        for other in same:
            if other["round"] == row["round"]:
                return other["qps"]
        return same[0]["qps"] if same else None

    def per_cpu(row: dict) -> float:
        """Queries per CPU second of the daemon: what a query costs it,
        whatever share of the machine it got (another program's load
        moves queries/s, not this)."""
        return row["qps"] / row["cpu"]["daemon"] if row["cpu"]["daemon"] else 0.0

    print("\n| backend | query mix | batch | queries/s | % of daemon.echo | % of plain echo "
          "| % of plain, same answer bytes | queries per daemon CPU second | % of daemon.echo's |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    names = {
        "mix": "latest + files.list", "compact": f"latest + files.list fields={','.join(COMPACT_FIELDS)}",
        "latest": "instances.latest only", "files": "files.list only",
        "echo": "daemon.echo", "plain": "plain ws echo", "bulk": "plain ws, answers as big as mix",
    }
    for row in rows:
        cells = []
        for mix in ("echo", "plain", "bulk"):
            top = ceiling(row, mix)
            cells.append(f"{100 * row['qps'] / top:.0f}%" if top and (mix != "bulk" or row["mix"] == "mix") else "-")
        echo = [other for other in rows if (other["backend"], other["mix"], other["batch"], other["round"])
                == (row["backend"], "echo", row["batch"], row["round"])] or \
            [other for other in rows if (other["backend"], other["mix"], other["batch"])
             == (row["backend"], "echo", row["batch"])]
        own = per_cpu(row)
        cpu_share = f"{100 * own / per_cpu(echo[0]):.0f}%" if echo and per_cpu(echo[0]) and row["mix"] not in (
            "plain", "bulk") else "-"
        own_text = "-" if row["mix"] in ("plain", "bulk") else f"{own:,.0f}"  # the daemon did nothing
        print(f"| {row['backend']} | {names[row['mix']]} | {row['batch']} | {row['qps']:,.0f} | "
              f"{cells[0]} | {cells[1]} | {cells[2]} | {own_text} | {cpu_share} |")
    targets: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        if row["mix"] in ("mix", "compact", "latest", "files") and row["batch"] > 1:
            top = ceiling(row, "echo")
            targets.setdefault((row["backend"], row["mix"]), []).append((row["qps"], row["qps"] / top if top else 0))
    for (backend, mix), measured in targets.items():
        # the median round's: neither the luckiest nor the unluckiest
        qps = statistics.median(q for q, _ in measured)
        share = statistics.median(r for _, r in measured)
        rounds = f" (median of {len(measured)} rounds: {', '.join(f'{r:.0%}' for _, r in measured)})" \
            if len(measured) > 1 else ""
        print(f"targets on {backend}, {names[mix]}: >= 60% of daemon.echo in the same run: {share:.0%}{rounds}, "
              f"{'met' if share >= 0.6 else 'NOT met'}; >= 10,000 q/s: {qps:,.0f}, "
              f"{'met' if qps >= 10_000 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--files-share", type=float, default=0.5,
                        help="share of files.list calls in the query mix (the rest: instances.latest)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of the batched mix, compact mix and echo, one after the other")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    args.products, args.days = (5, 2) if args.quick else (50, 30)
    if args.quick and args.seconds == 10.0:
        args.seconds = 2.0
    args.echo_data = "".join(random.Random(7).choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(200))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"--backends: unknown {', '.join(sorted(unknown))} (sqlite, postgres)")
    print(f"{args.products} products x 4 instances a day x {args.days} days x {FILE_COUNT} files; "
          f"{args.clients} clients in {args.procs} processes, {args.seconds:g} s per run, "
          f"batch {args.batch}, files.list share {args.files_share:g}; {os.cpu_count()} CPUs", flush=True)

    root = Path(tempfile.mkdtemp(prefix="muppet-bench-index-"))
    echo_port = free_port()
    echo = subprocess.Popen([PYTHON, CLIENT, "echo-server", str(echo_port)])
    pg = None
    rows: list[dict] = []
    try:
        for name in backends:
            workdir = root / name
            workdir.mkdir()
            if name == "sqlite":
                database = f"sqlite:///{workdir / 'muppet.db'}"
            else:
                from pgserver import PostgresServer

                pg = PostgresServer()
                pg.start()
                database = pg.create_database("bench")
            rows += run_backend(args, name, database, workdir, echo.pid, f"ws://127.0.0.1:{echo_port}")
            if pg is not None:
                pg.stop()
                pg = None
    finally:
        stop(echo)
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    table(rows)


if __name__ == "__main__":
    main()
