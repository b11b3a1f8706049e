"""One file to N consumers: BitTorrent (muppet-sync) against plain HTTP, in
network namespaces with rate-limited links (the MUPPET design: the swarm grows
with the consumers, the seeder's upload does not; docs/sync.md, "Measured").

Topology, built fresh for each run and removed at the end (also on Ctrl-C and
on errors; leftovers of a killed run are removed at the start): a "switch"
namespace holding a bridge, and one namespace per host, each joined to the
bridge by a veth pair whose two ends are both limited by
``tc qdisc ... tbf rate RATEmbit burst 256kb latency 100ms`` (the host's upload
and its download; the seeder's at ``--seeder-rate-mbit`` where that is given):

    seeder   10.77.0.1   the MUPPET daemon (the index, SQLite, API with tokens),
                         the origin backend's directory, the seeder, an HTTP server
    c1..cN   10.77.0.11+ one consumer each

Every name made here starts with ``mpbs-`` (namespaces, and the veths inside
them).

Runs, in this order, each with fresh processes and state on every host:
1. hashing: our SHA-256 (sync.place.sha256_file) and our torrent's piece
   hashing (sync.torrent.make_torrent, SHA-1), beside ``sha256sum`` on the
   same file, warm page cache, best of three;
2. BitTorrent, one consumer alone, then all N at once (``--repeat`` times):
   the file (a hard link of it, under a product of the run's own) is
   registered with ``muppet register`` on the origin backend; the seeder sees
   the file event, makes the torrent, seeds it and stores it in the index;
   each consumer sees that, fetches from the swarm, checks the SHA-256, places
   the file under its data directory and registers its copy;
3. HTTP: ``curl`` on each consumer from ``python -m http.server`` on the
   seeder's host, one alone, then all N at once.

How the times are taken (every namespace shares the host's clock):
- a BitTorrent run lasts from the registration's commit (the ``at`` of its
  file event in the index) to the moment the last consumer's file appears at
  its final path under data_dir (verify_and_place renames it there whole);
- the delay is from that commit to a consumer's first payload byte on the
  wire (a raw packet socket in the consumer's namespace, bench/sync_node.py
  ``sniff``); the first disk block of its download file is printed beside it
  (it lags the wire by up to half a second: page cache and block accounting);
- the seeder's and consumers' steps are read from their logs and ``muppet
  events``, the bytes each host sent from ``muppet-sync status --json``;
- an HTTP run lasts from starting the curls to the last one's exit.

Targets: BitTorrent's N-consumer time at most 1.3x one consumer's alone,
measured in the same run (HTTP: about Nx, the seeder's uplink being shared),
the seeder uploading at most 1.5 copies of the file, and a delay under one
second. The scale run: ``--consumers 16 --rate-mbit 20 --size-mb 50`` (16
consumers whose links, not the 2 cores, are the limit).

The seeder and consumers: ``muppet-sync seed`` / ``fetch`` when the installed
muppet-sync has them (``--driver commands``), else bench/sync_node.py, which
drives the same engine (sync/engine.py) through the same index calls
(``--driver engine``; the default ``auto`` picks). The experiment options
(``--setting``, ``--super-seed``, ``--piece-size``) run the same commands
with libtorrent settings, or the seeder's piece size, patched in by
bench/sync_node.py; sync/engine.py is not changed.

    .venv/bin/python bench/sync.py [--size-mb 200] [--rate-mbit 100]
        [--consumers 4] [--quick] [--repeat 1] [--only hash,bt,http]
        [--driver auto|engine|commands] [--setting NAME=VALUE]...
        [--seeder-setting NAME=VALUE]... [--consumer-setting NAME=VALUE]...
        [--super-seed] [--piece-size BYTES] [--log-pieces] [--keep]

--log-pieces: every host logs each block it sends and each piece it
completes (bench/sync_node.py); each run then says how often the seeder sent
a piece again, and why: another consumer had it already (the asker did not
know, or took it from the seeder anyway), or another was still receiving it
(both asked at about the same time). ``--seeder-setting`` and
``--consumer-setting`` patch libtorrent settings into one side only.

--quick: a 20 MB file (unless --size-mb is given): checks the script in under
a minute. Needs root, ``ip``, ``tc``, ``curl`` and ``sha256sum``. MB are
10^6 bytes and Mbit 10^6 bits throughout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from sync.place import sha256_file  # noqa: E402
from sync.torrent import make_torrent  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
MUPPET = str(ROOT / ".venv" / "bin" / "muppet")
MUPPET_SYNC = str(ROOT / ".venv" / "bin" / "muppet-sync")
NODE = str(ROOT / "bench" / "sync_node.py")

PREFIX = "mpbs"
SWITCH = f"{PREFIX}-sw"
SUBNET = "10.77.0"
SEEDER_IP = f"{SUBNET}.1"
API_PORT = 8765
BT_PORT = 6881
HTTP_PORT = 8080
#: the file's name on the origin; each BitTorrent run registers a hard link of
#: it under a name and product of its own
MASTER = "bench"
ORIGIN = "origin"
FORMAT = "bin"
#: tbf's burst and latency, as measured to let a link carry its set rate
TBF = "burst 256kb latency 100ms"
#: the targets: N consumers at once in at most this many times one alone's
#: time, the seeder sending at most this many copies of the file
RATIO_TARGET = 1.3
SEEDER_TARGET = 1.5


class BenchError(Exception):
    pass


# --- processes ----------------------------------------------------------------


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command to its end; BenchError with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def in_ns(ns: str, argv: list[str]) -> list[str]:
    # ip netns exec execs the command: the Popen's pid is the command's
    return ["ip", "netns", "exec", ns, *argv]


class Proc:
    """A process started by the bench, in its own session (Ctrl-C at the
    terminal reaches only the bench, which stops it), with stderr to a log
    file and, for nodes, stdout read line by line as JSON objects."""

    started: ClassVar[list[Proc]] = []

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict | None = None,
                 json_lines: bool = False, stdin: bool = False) -> None:
        self.name = name
        self.log = log
        self.lines: queue.Queue = queue.Queue()
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE if json_lines else open(log.with_suffix(".out"), "w"),
            stderr=open(log, "w"), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True, text=True,
        )
        Proc.started.append(self)
        if json_lines:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"what": "noise", "line": line.rstrip()})
        self.lines.put(None)

    def expect(self, what: str, timeout: float) -> dict:
        """The next JSON line whose "what" is ``what`` (lines before it are
        dropped); BenchError on timeout or when the process ends."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{self.name}: no {what!r} within {timeout:.0f} s\n{self.tail()}") from None
            if item is None:
                self.popen.wait()
                raise BenchError(f"{self.name} exited with {self.popen.returncode} before {what!r}\n{self.tail()}")
            if item.get("what") == what:
                return item

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"    {self.name}: {line}" for line in text)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        if self in Proc.started:
            Proc.started.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in reversed(list(cls.started)):
            proc.stop(5.0)


# --- the network ----------------------------------------------------------------


class Network:
    """The switch namespace, one namespace per host, veth pairs, tc limits."""

    def __init__(self, consumers: int, rate_mbit: float, seeder_rate_mbit: float) -> None:
        self.hosts = {"seeder": SEEDER_IP} | {f"c{i}": f"{SUBNET}.{10 + i}" for i in range(1, consumers + 1)}
        #: each host's link, each way, as tc says it
        self.rates = {host: f"{seeder_rate_mbit if host == 'seeder' else rate_mbit:g}mbit" for host in self.hosts}

    @staticmethod
    def ns(host: str) -> str:
        return f"{PREFIX}-{host}"

    @staticmethod
    def leftovers() -> list[str]:
        names = [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.split()]
        return [name for name in names if name.startswith(PREFIX + "-")]

    @classmethod
    def remove_leftovers(cls) -> list[str]:
        """Delete every namespace named by this bench, after killing the
        processes still in it (a run killed with -9 leaves both)."""
        names = cls.leftovers()
        for ns in names:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        # veths are made inside the namespaces and die with them; a root-side
        # one would only be left by a run that failed between two steps
        for line in run(["ip", "-br", "link"]).stdout.splitlines():
            name = line.split()[0].split("@")[0]
            if name.startswith(PREFIX + "-"):
                subprocess.run(["ip", "link", "del", name], capture_output=True)
        return names

    def up(self) -> None:
        run(["ip", "netns", "add", SWITCH])
        run(["ip", "-n", SWITCH, "link", "set", "lo", "up"])
        run(["ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", SWITCH, "link", "set", "br0", "up"])
        for host, ip in self.hosts.items():
            ns = self.ns(host)
            run(["ip", "netns", "add", ns])
            # both ends made in their namespaces at once: nothing in the root one
            run(["ip", "link", "add", f"{PREFIX}-{host}", "netns", ns, "type", "veth",
                 "peer", "name", host, "netns", SWITCH])
            run(["ip", "-n", ns, "link", "set", f"{PREFIX}-{host}", "name", "eth0"])
            run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", SWITCH, "link", "set", host, "master", "br0"])
            run(["ip", "-n", SWITCH, "link", "set", host, "up"])
            # the host's upload, then its download
            rate = self.rates[host]
            run(in_ns(ns, ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, *TBF.split()]))
            run(in_ns(SWITCH, ["tc", "qdisc", "add", "dev", host, "root", "tbf", "rate", rate, *TBF.split()]))

    def down(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)
        subprocess.run(["ip", "netns", "del", SWITCH], capture_output=True)


# --- the daemon -------------------------------------------------------------------


def write_daemon_config(root: Path, consumers: int, token_digest: str, products: list[str]) -> Path:
    """muppet.toml: a product per BitTorrent run (so that a run's seeder and
    consumers, catching up at start, never see an earlier run's file), the
    origin backend, one backend per consumer, the API on the seeder's address
    with a tokens file."""
    directory = root / "daemon"
    directory.mkdir()
    (directory / "tokens.toml").write_text(
        f'[tokens.bench]\nrole = "write"\nsha256 = "{token_digest}"\n'
    )
    backends = "".join(
        f'[backends.consumer-{i}]\nname = "Consumer {i}"\nurl = "file://{root / f"c{i}"}"\n\n'
        for i in range(1, consumers + 1)
    )
    products_toml = "".join(
        f'[products.{p}]\nname = "bench/sync.py: run {p}"\nfile_count = 1\nlifetime_hours = 24\n\n' for p in products
    )
    path = directory / "muppet.toml"
    path.write_text(
        f"""# bench/sync.py: the index on the seeder's host
[daemon]
state_dir = "{directory / 'state'}"
database = "sqlite:///{directory / 'muppet.db'}"

[api]
listen = "{SEEDER_IP}:{API_PORT}"
tokens_file = "tokens.toml"

{products_toml}[formats.{FORMAT}]
name = "Raw bytes"

[backends.{ORIGIN}]
name = "The producer's storage (the seeder's host)"
url = "file://{root / 'origin'}"

{backends}"""
    )
    run([MUPPET, "validate", str(path)])
    return path


def start_daemon(config: Path, root: Path, env: dict) -> Proc:
    daemon = Proc("daemon", in_ns(Network.ns("seeder"), [MUPPET, "daemon", "--config", str(config)]),
                  root / "logs" / "daemon.log")
    deadline = time.monotonic() + 60
    while True:
        if daemon.popen.poll() is not None:
            raise BenchError(f"the daemon exited with {daemon.popen.returncode}\n{daemon.tail()}")
        probe = subprocess.run(in_ns(Network.ns("seeder"), [MUPPET, "products", "--api", api_url()]),
                               capture_output=True, text=True, env={**os.environ, **env})
        if probe.returncode == 0:
            return daemon
        if time.monotonic() > deadline:
            raise BenchError(f"the daemon did not answer within 60 s: {probe.stderr.strip()}\n{daemon.tail()}")
        time.sleep(0.3)


def api_url() -> str:
    return f"ws://{SEEDER_IP}:{API_PORT}"


def register(path: Path, reference_time: datetime, env: dict, product: str) -> tuple[float, float, dict]:
    """``muppet register`` on the seeder's host: (start, end, the file)."""
    started = time.time()
    done = subprocess.run(
        in_ns(Network.ns("seeder"), [
            MUPPET, "register", str(path), "--product", product, "--backend", ORIGIN, "--format", FORMAT,
            "--reference-time", reference_time.strftime("%Y-%m-%dT%H:%M:%SZ"), "--api", api_url(), "--json",
        ]), capture_output=True, text=True, env={**os.environ, **env})
    ended = time.time()
    if done.returncode != 0:
        raise BenchError(f"muppet register {path}: exit {done.returncode}: {done.stderr.strip()}")
    (item,) = json.loads(done.stdout)
    return started, ended, item


def parse_at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def file_events(product: str, env: dict) -> list[dict]:
    """Every file event of ``product``, from ``muppet events --json``."""
    done = run(in_ns(Network.ns("seeder"), [MUPPET, "events", "--json", "--kind", "file", "--product", product,
                                            "--api", api_url()]), env={**os.environ, **env})
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


# --- muppet-sync ----------------------------------------------------------------------

#: after the last file is placed, long enough for every status.json (rewritten
#: each second) to show the final byte counts
STATUS_SETTLE = 1.2


def sync_commands_exist() -> bool:
    done = subprocess.run([MUPPET_SYNC, "fetch", "--help"], capture_output=True, text=True)
    return done.returncode == 0


def write_sync_config(path: Path, ip: str, state_dir: Path, product: str, *, data_dir: Path | None = None,
                      backend: str | None = None) -> Path:
    """seed.toml (without ``data_dir``) or fetch.toml for one host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fetch = data_dir is not None
    lines = [
        f'api = "{api_url()}"',
        f'state_dir = "{state_dir}"',
        f'listen = "{ip}:{BT_PORT}"',
        f'advertise = "{ip}:{BT_PORT}"',
        "trackers = []",
        "utp = false",
    ]
    if fetch:
        lines += [f'data_dir = "{data_dir}"', 'layout = "{product}/{filename}"', f'backend = "{backend}"',
                  'on_complete = ""']
    lines += ["", "[[select]]", f'products = ["{product}"]']
    if not fetch:
        lines.append(f'backend = "{ORIGIN}"')
    lines += ["recent = 1", "", "[peers]", f'allow = ["{SUBNET}.0/24"]']
    path.write_text("\n".join(lines) + "\n")
    return path


def sync_status(state_dir: Path) -> dict:
    """``muppet-sync status --json`` of one host."""
    done = subprocess.run([MUPPET_SYNC, "status", "--state-dir", str(state_dir), "--json"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"muppet-sync status --state-dir {state_dir}: exit {done.returncode}: "
                         f"{done.stderr.strip()}")
    return json.loads(done.stdout)


def row_of(status: dict, product: str) -> dict:
    rows = [r for r in status.get("files", []) if r.get("product") == product]
    return rows[0] if rows else {}


def wait_for_log(proc: Proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log.read_text(errors="replace"):
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name}: no {text!r} in its log within {timeout:.0f} s\n{proc.tail()}")
        time.sleep(0.05)


def log_time(log: Path, text: str) -> float | None:
    """The time of the first line of a muppet-sync log holding ``text``
    (logging's asctime: local time, milliseconds)."""
    for line in log.read_text(errors="replace").splitlines():
        if text in line:
            stamp = line[:23]
            try:
                moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                continue
            return time.mktime(moment.timetuple()) + moment.microsecond / 1e6
    return None


class FileWatch(threading.Thread):
    """Polls, every ``interval`` seconds, each consumer's download directory
    for the first allocated block of the file (ext4 counts a page written
    through libtorrent's memory map at once, before writeback) and its place
    under data_dir (verify_and_place renames it there complete)."""

    def __init__(self, watches: dict[str, tuple[Path, str, Path]], interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.watches = watches
        self.interval = interval
        self.first_byte: dict[str, float | None] = {h: None for h in watches}
        self.placed: dict[str, float | None] = {h: None for h in watches}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            for host, (downloads, name, final) in self.watches.items():
                if self.first_byte[host] is None and _allocated(downloads, name):
                    self.first_byte[host] = now
                if self.placed[host] is None and final.exists():
                    self.placed[host] = now
            self._halt.wait(self.interval)

    def done(self) -> bool:
        return all(t is not None for t in self.placed.values())

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _allocated(downloads: Path, name: str) -> bool:
    try:
        for entry in os.scandir(downloads):
            candidate = Path(entry.path) / name if entry.is_dir() else Path(entry.path)
            if candidate.name == name:
                try:
                    if candidate.stat().st_blocks > 0:
                        return True
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        pass
    return False


def piece_log(log: Path) -> list[dict]:
    """The PIECE-LOG lines of a host's log (bench/sync_node.py patch_piece_log)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("PIECE-LOG "):
            lines.append(json.loads(line.split(" ", 1)[1]))
    return lines


def seeder_repeats(seeder_log: Path, consumer_logs: dict[str, Path]) -> dict:
    """Why the seeder sent pieces more than once (--log-pieces): each time
    it began to send a piece to a consumer after it had begun to send it to
    another, was that other one already done with it (the consumer asked
    for a piece the swarm had: it did not know, or could not get it there),
    or still receiving it (both asked for it at about the same time)?"""
    first_sent: dict[int, dict[str, float]] = {}
    blocks = 0
    for item in piece_log(seeder_log):
        if "sent" in item:
            blocks += 1
            first_sent.setdefault(item["sent"], {}).setdefault(item["to"], item["t"])
    done: dict[int, dict[str, float]] = {}
    for ip, log in consumer_logs.items():
        for item in piece_log(log):
            if "done" in item:
                done.setdefault(item["done"], {}).setdefault(ip, item["t"])
    # times a consumer snubbed the seeder: no block from it within the request timeout
    snubs = sum(1 for log in consumer_logs.values() for item in piece_log(log)
                if item.get("snubbed") == SEEDER_IP)
    # block requests to another consumer that timed out (asked again of someone else, often the seeder)
    timeouts = sum(1 for log in consumer_logs.values() for item in piece_log(log)
                   if "timeout" in item and item["from"] != SEEDER_IP)
    had, in_flight = 0, 0
    for piece, sends in first_sent.items():
        order = sorted(sends.items(), key=lambda kv: kv[1])
        for i, (_, t) in enumerate(order[1:], start=1):
            earlier = [ip for ip, _ in order[:i]]
            if any(done.get(piece, {}).get(ip, float("inf")) <= t for ip in earlier):
                had += 1
            else:
                in_flight += 1
    return {"pieces": len(first_sent), "sends": sum(len(s) for s in first_sent.values()), "blocks": blocks,
            "had": had, "in_flight": in_flight, "snubs": snubs, "timeouts": timeouts,
            # when the last piece that no consumer had got yet began to leave
            # the seeder: the swarm cannot be done before it has it
            "last_new": max((min(sends.values()) for sends in first_sent.values()), default=None)}


# --- hashing ----------------------------------------------------------------------


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def hashing(path: Path, repeats: int) -> dict:
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    tool, tool_out = best_of(repeats, lambda: run(["sha256sum", str(path)]).stdout.split()[0])
    ours, ours_out = best_of(repeats, lambda: sha256_file(path))
    pieces, _ = best_of(repeats, lambda: make_torrent(path))
    if tool_out != ours_out:
        raise BenchError(f"sha256sum says {tool_out}, sync.place.sha256_file {ours_out}")
    py_sha1, _ = best_of(repeats, lambda: _hashlib_sha1(path))
    return {"size": size, "sha256sum": size / tool / 1e6, "sha256_file": size / ours / 1e6,
            "make_torrent": size / pieces / 1e6, "hashlib_sha1": size / py_sha1 / 1e6, "digest": ours_out}


def _hashlib_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- BitTorrent runs --------------------------------------------------------------


class Bench:
    def __init__(self, args, root: Path, network: Network, env: dict, master: Path) -> None:
        self.args = args
        self.root = root
        self.network = network
        self.env = env
        self.master = master
        self.size = master.stat().st_size
        self.consumers = [h for h in network.hosts if h != "seeder"]
        self.reference_time = datetime(2026, 11, 28, tzinfo=UTC)
        self.timeout = 60 + 10 * self.size * 8 / (min(args.rate_mbit, args.seeder_rate_mbit) * 1e6)
        if args.driver == "auto":
            self.driver = "commands" if sync_commands_exist() else "engine"
        else:
            self.driver = args.driver
        if self.driver == "commands" and args.verify_seed:
            raise BenchError("--verify-seed: only with --driver engine")

    def settings_of(self, role: str) -> list[str]:
        """--setting, and --seeder-setting or --consumer-setting, for a host
        of this role ("seed" or "fetch")."""
        own = self.args.seeder_setting if role == "seed" else self.args.consumer_setting
        return [f"--setting={s}" for s in [*self.args.setting, *own]]

    def node_options(self, role: str) -> list[str]:
        return ((["--trace"] if self.args.trace else []) + (["--log-alerts"] if self.args.log_alerts else [])
                + (["--log-pieces"] if self.args.log_pieces else []) + self.settings_of(role))

    def next_reference_time(self) -> datetime:
        self.reference_time += timedelta(hours=1)
        return self.reference_time

    def bittorrent(self, label: str, consumers: list[str]) -> dict:
        """One registration of a product of its own (``label``), fetched by
        ``consumers``; fresh processes and state on every host."""
        run_dir = self.root / "runs" / label
        path = self.root / "origin" / f"{label}.{FORMAT}"
        os.link(self.master, path)  # same bytes, same page cache, a file of its own
        sniffers = {host: Proc(f"sniffer [{label}] on {host}", in_ns(self.network.ns(host), [
            PYTHON, NODE, "sniff", "--iface", "eth0", "--port", str(BT_PORT)]),
            self.root / "logs" / f"{label}-{host}-sniff.log", json_lines=True, stdin=True) for host in consumers}
        try:
            for sniffer in sniffers.values():
                sniffer.expect("ready", 30)
            if self.driver == "commands":
                result = self._with_commands(label, consumers, run_dir, path)
            else:
                result = self._with_engine(label, consumers, run_dir, path)
            for host, sniffer in sniffers.items():
                # what the consumer itself saw first (libtorrent's count, or the
                # file's first block) stays beside the wire's
                placed = result["placed"][host]
                placed["first_seen"] = placed.get("first_byte")
                placed["first_byte"] = sniffer.expect("first_byte", 5)["at"]
        finally:
            for sniffer in sniffers.values():
                sniffer.stop()
        placed = result["placed"]
        commit = result["commit"]
        result.update({
            "label": label, "consumers": len(consumers),
            "total": max(p["placed"] for p in placed.values()) - commit,
            "transfer": max(p["fetched"] for p in placed.values()) - min(p["first_byte"] for p in placed.values()),
            "delays": sorted(p["first_byte"] - commit for p in placed.values()),
        })
        if self.args.log_pieces:
            logs = self.root / "logs"
            result["repeats"] = seeder_repeats(
                logs / f"{label}-seeder.log",
                {self.network.hosts[h]: logs / f"{label}-{h}.log" for h in consumers})
        return result

    # -- with muppet-sync seed / fetch

    def _with_commands(self, label: str, consumers: list[str], run_dir: Path, path: Path) -> dict:
        logs = self.root / "logs"
        seeder_state = run_dir / "seeder" / "state"
        seed_toml = write_sync_config(run_dir / "seeder" / "seed.toml", SEEDER_IP, seeder_state, label)
        procs = {"seeder": Proc(f"muppet-sync seed [{label}]", in_ns(self.network.ns("seeder"),
                                self.sync_argv("seed", seed_toml)), logs / f"{label}-seeder.log", env=self.env)}
        watches = {}
        for host in consumers:
            ip, number = self.network.hosts[host], host[1:]
            state, data_dir = run_dir / host / "state", self.root / host
            toml = write_sync_config(run_dir / host / "fetch.toml", ip, state, label, data_dir=data_dir,
                                     backend=f"consumer-{number}")
            procs[host] = Proc(f"muppet-sync fetch [{label}] on {host}", in_ns(self.network.ns(host),
                               self.sync_argv("fetch", toml)), logs / f"{label}-{host}.log", env=self.env)
            watches[host] = (state / "downloads", path.name, data_dir / label / path.name)
        statuses = {}
        try:
            for proc in procs.values():
                wait_for_log(proc, "caught up with", 60)
            watcher = FileWatch(watches)
            watcher.start()
            try:
                cmd_start, cmd_end, item = register(path, self.next_reference_time(), self.env, label)
                deadline = time.monotonic() + self.timeout
                while not watcher.done():
                    for proc in procs.values():
                        if proc.popen.poll() is not None:
                            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}\n{proc.tail()}")
                    if time.monotonic() > deadline:
                        raise BenchError(f"{label}: not every consumer placed the file within {self.timeout:.0f} s\n"
                                         + "\n".join(p.tail(8) for p in procs.values()))
                    time.sleep(0.1)
            finally:
                watcher.stop()
            time.sleep(STATUS_SETTLE)  # status.json is rewritten every second: let it see the end
            for host in procs:
                state = seeder_state if host == "seeder" else run_dir / host / "state"
                statuses[host] = sync_status(state)
        finally:
            for proc in procs.values():
                proc.stop()
        for proc in procs.values():
            errors = [line for line in proc.log.read_text(errors="replace").splitlines()
                      if " ERROR " in line or "Traceback" in line]
            if errors:
                raise BenchError(f"{proc.name} logged errors:\n" + "\n".join(errors[:10]))
        events = file_events(label, self.env)
        origin = [e for e in events if e["data"]["backend"] == ORIGIN]
        commit = parse_at(origin[0]["at"])
        published = next(parse_at(e["at"]) for e in origin if e["data"].get("info_hash"))
        seed_log = procs["seeder"].log
        seeding = {
            "torrent_start": log_time(seed_log, "making its torrent"),
            "seeding": log_time(seed_log, "seeding " + str(path)),
            "published": published,
        }
        placed = {}
        for host in consumers:
            log = procs[host].log
            first_byte, placed_at = watcher.first_byte[host], watcher.placed[host]
            placed[host] = {
                "fetch_start": log_time(log, "muppet.sync.engine: fetching"),
                "first_byte": first_byte, "fetched": log_time(log, "muppet.sync.engine: fetched"),
                "placed": placed_at, "uploaded_bytes": row_of(statuses[host], label).get("uploaded"),
            }
        return {"cmd_start": cmd_start, "cmd_end": cmd_end, "commit": commit, "seeding": seeding,
                "placed": placed, "file_id": item["id"], "seen_what": "first block in its download file",
                "seeder_upload": row_of(statuses["seeder"], label).get("uploaded") or 0}

    def sync_argv(self, role: str, config: Path) -> list[str]:
        extra = (self.settings_of(role) + (["--super-seed"] if self.args.super_seed and role == "seed" else [])
                 + ([f"--piece-size={self.args.piece_size}"] if self.args.piece_size and role == "seed" else [])
                 + (["--log-alerts"] if self.args.log_alerts else [])
                 + (["--log-pieces"] if self.args.log_pieces else []))
        if extra:  # experiments: the same command, with libtorrent settings patched in (bench/sync_node.py)
            return [PYTHON, NODE, "command", *extra, "--", role, "--config", str(config)]
        return [MUPPET_SYNC, role, "--config", str(config)]

    # -- with bench/sync_node.py on the engine

    def _with_engine(self, label: str, consumers: list[str], run_dir: Path, path: Path) -> dict:
        logs = self.root / "logs"
        nodes: list[Proc] = []
        common = ["--api", api_url(), "--product", label, "--origin", ORIGIN]
        seeder_addr = f"{SEEDER_IP}:{BT_PORT}"
        argv = [PYTHON, NODE, "seeder", *common, *self.node_options("seed"), "--listen", seeder_addr,
                "--advertise", seeder_addr, "--state", str(run_dir / "seeder" / "state")]
        if self.args.super_seed:
            argv.append("--super-seed")
        if self.args.piece_size:
            argv.append(f"--piece-size={self.args.piece_size}")
        if self.args.verify_seed:
            argv.append("--verify")
        seeder = Proc(f"seeder [{label}]", in_ns(self.network.ns("seeder"), argv), logs / f"{label}-seeder.log",
                      env=self.env, json_lines=True, stdin=True)
        nodes.append(seeder)
        fetchers: dict[str, Proc] = {}
        for host in consumers:
            addr = f"{self.network.hosts[host]}:{BT_PORT}"
            others = [f"{self.network.hosts[h]}:{BT_PORT}" for h in consumers if h != host]
            argv = [PYTHON, NODE, "consumer", *common, *self.node_options("fetch"), "--listen", addr,
                    "--advertise", addr, "--state", str(run_dir / host / "state"), "--backend", f"consumer-{host[1:]}",
                    "--data-dir", str(self.root / host)]
            if self.args.engine_peers:
                argv += ["--peers", *others]
            fetchers[host] = Proc(f"{host} [{label}]", in_ns(self.network.ns(host), argv),
                                  logs / f"{label}-{host}.log", env=self.env, json_lines=True, stdin=True)
            nodes.append(fetchers[host])
        stopped = {}
        try:
            for node in nodes:
                node.expect("ready", 60)
            cmd_start, cmd_end, item = register(path, self.next_reference_time(), self.env, label)
            seeding = seeder.expect("seeding", self.timeout)
            placed = {host: proc.expect("placed", self.timeout) for host, proc in fetchers.items()}
            for proc in fetchers.values():
                proc.expect("registered", 30)
        finally:
            for node in nodes:
                if node.popen.stdin:
                    node.popen.stdin.close()
            for node in nodes:
                try:
                    stopped[node.name] = node.expect("stopped", 15)
                except BenchError:
                    pass
                node.stop()
        return {"cmd_start": cmd_start, "cmd_end": cmd_end, "commit": parse_at(seeding["event_at"]),
                "seeding": seeding, "placed": placed, "file_id": item["id"],
                "seen_what": "first byte libtorrent counted",
                "seeder_upload": sum(t["uploaded_bytes"] for t in stopped.get(seeder.name, {}).get("torrents", []))}

    def http(self, label: str, consumers: list[str], url: str) -> dict:
        """``curl`` on each of ``consumers`` at once from the seeder's HTTP server."""
        procs = {}
        started = time.time()
        for host in consumers:
            out = self.root / host / f"http-{label}"
            out.mkdir(parents=True, exist_ok=True)
            procs[host] = subprocess.Popen(
                in_ns(self.network.ns(host), ["curl", "-sS", "--fail", "-o", str(out / self.master.name),
                                              "-w", "%{time_starttransfer} %{time_total}", url]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        ended: dict[str, float] = {}
        deadline = time.monotonic() + self.timeout * len(consumers)
        try:
            while len(ended) < len(procs):
                for host, proc in procs.items():
                    if host not in ended and proc.poll() is not None:
                        ended[host] = time.time()
                if time.monotonic() > deadline:
                    raise BenchError(f"HTTP {label}: not done within {self.timeout * len(consumers):.0f} s")
                time.sleep(0.01)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for host, proc in procs.items():
            if proc.returncode != 0:
                raise BenchError(f"curl on {host}: exit {proc.returncode}: {proc.stderr.read().strip()}")
            got = (self.root / host / f"http-{label}" / self.master.name).stat().st_size
            if got != self.size:
                raise BenchError(f"curl on {host}: {got} bytes, expected {self.size}")
        return {"label": label, "consumers": len(consumers), "total": max(ended.values()) - started,
                "each": {h: t - started for h, t in ended.items()}}


# --- printing ---------------------------------------------------------------------


def show_bt(result: dict, size: int) -> None:
    """One BitTorrent run, every time relative to the registration's commit."""
    s, commit = result["seeding"], result["commit"]

    def at(t: float | None, digits: int = 3) -> str:
        return "?" if t is None else f"{t - commit:+.{digits}f} s"

    print(f"  registration: muppet register took {result['cmd_end'] - result['cmd_start']:.2f} s (start-up and "
          f"hashing included); its commit (the file event) came {commit - result['cmd_start']:.2f} s after its start")
    made = (f"made the torrent in {s['torrent_made'] - s['torrent_start']:.3f} s, " if s.get("torrent_made")
            else f"started the torrent at {at(s.get('torrent_start'))}, ")
    print(f"  seeder: {made}seeding at {at(s.get('seeding'))}, torrent in the index at {at(s['published'])}; "
          f"uploaded {result['seeder_upload'] / 1e6:.0f} MB ({result['seeder_upload'] / size:.2f}x the file)")
    for host, p in sorted(result["placed"].items()):
        began = p.get("fetch_start")
        rate = (f"{size / 1e6 / (p['fetched'] - p['first_byte']):.1f} MB/s"
                if p.get("fetched") and p["fetched"] > p["first_byte"] else "? MB/s")
        up = p.get("uploaded_bytes")
        print(f"  {host}: fetch started {at(began)}, first byte on the wire {at(p['first_byte'])} "
              f"({result['seen_what']} {at(p.get('first_seen'))}), complete {at(p.get('fetched'), 2)}, placed "
              f"{at(p['placed'], 2)} ({rate}); uploaded {'?' if up is None else f'{up / 1e6:.0f}'} MB")
    if "repeats" in result:
        r = result["repeats"]
        print(f"  the seeder sent {r['pieces']} pieces {r['sends']} times: {r['had']} times a piece another consumer "
              f"had already, {r['in_flight']} times one that another was still receiving from it; the last piece "
              f"new to the swarm began to leave it at {at(r['last_new'], 1)}; consumers snubbed the seeder "
              f"{r['snubs']} times, and {r['timeouts']} of their block requests to each other timed out")
    print(f"  => {result['total']:.2f} s from the registration's commit to the last file placed "
          f"(first byte to last complete: {result['transfer']:.2f} s)")


PARTS = ("hash", "bt", "http")


def links(args) -> str:
    """The links' rates, as the run's lines say them."""
    if args.seeder_rate_mbit == args.rate_mbit:
        return f"every link {args.rate_mbit:g} Mbit/s each way"
    return f"the seeder's link {args.seeder_rate_mbit:g} Mbit/s and each consumer's {args.rate_mbit:g} Mbit/s, each way"


def summary(args, size: int, n: int, results: dict) -> None:
    best = size * 8 / (min(args.rate_mbit, args.seeder_rate_mbit) * 1e6)
    print(f"\nsummary ({size / 1e6:g} MB, {n} consumers, {links(args)}; the wire's best "
          f"for one consumer is {best:.1f} s; load average now {os.getloadavg()[0]:.2f}):")
    rows = []
    if "bt" in results:
        alones, swarms = results["bt"]
        alone_s = statistics.median(r["total"] for r in alones)
        swarm_s = statistics.median(r["total"] for r in swarms)
        ratio = swarm_s / alone_s
        delays = [d for r in alones + swarms for d in r["delays"]]
        from_command = [r["commit"] - r["cmd_start"] + d for r in alones + swarms for d in r["delays"]]
        seeder_share = statistics.median(r["seeder_upload"] for r in swarms) / size
        runs = "" if len(alones) == 1 else f", median of {len(alones)}"

        def each(results: list[dict]) -> str:
            return "" if len(results) == 1 else " (" + ", ".join(f"{r['total']:.1f}" for r in results) + ")"

        rows += [
            (f"BitTorrent, one consumer alone{runs}", f"{alone_s:.2f} s", "", each(alones).strip()),
            (f"BitTorrent, {n} consumers at once{runs}", f"{swarm_s:.2f} s", "", each(swarms).strip()),
            (f"BitTorrent ratio, {n} / one", f"{ratio:.2f}x", f"<= {RATIO_TARGET}x",
             "yes" if ratio <= RATIO_TARGET else "NO"),
            (f"BitTorrent, {n} consumers: seeder sent", f"{seeder_share:.2f}x the file", f"<= {SEEDER_TARGET}x",
             "yes" if seeder_share <= SEEDER_TARGET else "NO"),
        ]
    if "http" in results:
        h_alone, h_swarm = results["http"]
        h_ratio = h_swarm["total"] / h_alone["total"]
        rows += [
            ("HTTP, one consumer alone", f"{h_alone['total']:.2f} s", "", ""),
            (f"HTTP, {n} consumers at once", f"{h_swarm['total']:.2f} s", "", ""),
            (f"HTTP ratio, {n} / one", f"{h_ratio:.2f}x", f"about {n}x", "(reference)"),
        ]
    if "bt" in results and "http" in results:
        rows.append((f"{n} consumers: BitTorrent / HTTP", f"{swarm_s / h_swarm['total']:.2f}x", "", ""))
    if "hash" in results:
        h = results["hash"]
        rows += [
            ("hashing: sha256sum", f"{h['sha256sum']:.0f} MB/s", "", ""),
            ("hashing: sync.place.sha256_file", f"{h['sha256_file']:.0f} MB/s",
             "", f"{h['sha256_file'] / h['sha256sum']:.2f}x sha256sum"),
            ("hashing: make_torrent (SHA-1)", f"{h['make_torrent']:.0f} MB/s",
             "", f"{h['make_torrent'] / h['sha256sum']:.2f}x sha256sum"),
        ]
    if "bt" in results:
        rows += [
            ("delay, commit to first byte, worst", f"{max(delays):.3f} s", "< 1 s", "yes" if max(delays) < 1 else "NO"),
            ("delay, commit to first byte, median", f"{statistics.median(delays):.3f} s", "", ""),
            ("delay, commit to first byte, one consumer alone",
             f"{statistics.median(d for r in alones for d in r['delays']):.3f} s", "", ""),
            ("delay, `muppet register` start to first byte, worst", f"{max(from_command):.3f} s", "", ""),
        ]
    header = ("figure", "value", "target", "met / note")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(4)]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, help="the file's size, MB (default 200; 20 with --quick)")
    parser.add_argument("--rate-mbit", type=float, default=100.0, help="each host's link, each way (default 100)")
    parser.add_argument("--seeder-rate-mbit", type=float,
                        help="the seeder's link, each way, where it differs from the consumers' (default: "
                        "--rate-mbit): with the same link, the seeder's uplink bounds the time of N at once by "
                        "the copies it sends (docs/sync.md, \"A seeder with a faster link\")")
    parser.add_argument("--consumers", type=int, default=4, help="consumer hosts (default 4)")
    parser.add_argument("--quick", action="store_true", help="a 20 MB file: checks the script in under a minute")
    parser.add_argument("--driver", choices=["auto", "engine", "commands"], default="auto",
                        help="muppet-sync seed/fetch, or bench/sync_node.py on the engine (default: commands "
                        "when muppet-sync has them)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="BitTorrent runs (alone, then all) this many times; the summary takes medians")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--super-seed", action="store_true",
                        help="experiment: libtorrent super-seeding on the seeder")
    parser.add_argument("--piece-size", type=int, default=0, metavar="BYTES",
                        help="experiment: the seeder's torrents have pieces of this size, a power of two of at "
                        "least 16384 (default: libtorrent's choice, 128 KiB for 50 MB)")
    parser.add_argument("--verify-seed", action="store_true",
                        help="experiment: the seeder checks the file up front instead of seed mode (engine driver)")
    parser.add_argument("--seeder-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="experiment: as --setting, for the seeder only")
    parser.add_argument("--consumer-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="experiment: as --setting, for the consumers only")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="experiment: a libtorrent setting for every host on top of the engine's (repeatable)")
    parser.add_argument("--engine-peers", action="store_true",
                        help="engine driver: give each consumer the others' addresses (muppet-sync fetch only "
                        "knows the hosts that hold the file)")
    parser.add_argument("--trace", action="store_true",
                        help="engine driver: nodes log each connection's rates every second")
    parser.add_argument("--log-alerts", action="store_true",
                        help="every host logs every libtorrent alert (see them with --keep)")
    parser.add_argument("--log-pieces", action="store_true",
                        help="every host logs each block it sends and each piece it completes; the bench then "
                        "says why the seeder sent pieces more than once")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    args = parser.parse_args()
    if args.size_mb is None:
        args.size_mb = 20.0 if args.quick else 200.0
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--only: a comma-separated list of {', '.join(PARTS)}")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    if not 1 <= args.consumers <= 200:
        parser.error("--consumers: 1 to 200")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, tc)")
    for tool in ("ip", "tc", "curl", "sha256sum"):
        if shutil.which(tool) is None:
            parser.error(f"needs {tool} on PATH")

    # a SIGTERM or SIGHUP cleans up like Ctrl-C does
    def interrupted(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    lock = take_lock()
    removed = Network.remove_leftovers()
    if removed:
        print(f"removed leftovers of an earlier run: {', '.join(removed)}")
    root = Path(tempfile.mkdtemp(prefix="muppet-bench-sync-"))
    note_in_lock(lock, root, args.keep)
    if args.seeder_rate_mbit is None:
        args.seeder_rate_mbit = args.rate_mbit
    network = Network(args.consumers, args.rate_mbit, args.seeder_rate_mbit)
    size = int(args.size_mb * 1e6)
    results: dict = {}
    try:
        for d in ("logs", "origin", "runs"):
            (root / d).mkdir()
        network.up()
        print(f"{args.consumers} consumers and one seeder in network namespaces, {links(args)} "
              f"(tc tbf {TBF}); a {size / 1e6:g} MB file; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}; temporary directory {root}", flush=True)
        master = root / "origin" / f"{MASTER}.{FORMAT}"
        with open(master, "wb") as f:
            for offset in range(0, size, 1 << 20):
                f.write(os.urandom(min(1 << 20, size - offset)))

        if "hash" in parts:
            h = results["hash"] = hashing(master, repeats=3)
            print(f"\nhashing the {size / 1e6:g} MB file (warm page cache, best of 3):")
            print(f"  sha256sum (coreutils)                    {h['sha256sum']:6.0f} MB/s")
            print(f"  sync.place.sha256_file (SHA-256)         {h['sha256_file']:6.0f} MB/s  "
                  f"({h['sha256_file'] / h['sha256sum']:.2f}x sha256sum)")
            print(f"  sync.torrent.make_torrent (SHA-1 pieces) {h['make_torrent']:6.0f} MB/s  "
                  f"({h['make_torrent'] / h['sha256sum']:.2f}x sha256sum; Python's hashlib SHA-1 on the same "
                  f"file: {h['hashlib_sha1']:.0f} MB/s)", flush=True)

        secret = secrets.token_hex(32)
        env = {"MUPPET_TOKEN": secret}
        bench = Bench(args, root, network, env, master)
        n = len(bench.consumers)
        if "bt" in parts:
            labels = [(f"bt-alone{suffix}", f"bt-swarm{suffix}")
                      for suffix in ([""] if args.repeat == 1 else [f"-{i}" for i in range(1, args.repeat + 1)])]
            config = write_daemon_config(root, args.consumers, hashlib.sha256(secret.encode()).hexdigest(),
                                         [label for pair in labels for label in pair])
            start_daemon(config, root, env)
            print(f"\nthe MUPPET daemon answers at {api_url()} (write token required); `muppet validate` passed")
            driver = bench.driver
            print(f"seeder and consumers: "
                  f"{'bench/sync_node.py on sync.engine' if driver == 'engine' else 'muppet-sync seed / fetch'}"
                  + "".join(f"; {x}" for x in (["super-seeding"] if args.super_seed else [])
                            + ([f"pieces of {args.piece_size} bytes"] if args.piece_size else [])
                            + (["seeder checks up front"] if args.verify_seed else []) + args.setting
                            + [f"seeder {x}" for x in args.seeder_setting]
                            + [f"consumers {x}" for x in args.consumer_setting]), flush=True)
            alones, swarms = [], []
            for alone_label, swarm_label in labels:
                print(f"\nBitTorrent, one consumer alone (c1){repeat_note(alone_label)}:", flush=True)
                alones.append(bench.bittorrent(alone_label, bench.consumers[:1]))
                show_bt(alones[-1], size)
                print(f"\nBitTorrent, {n} consumers at once{repeat_note(swarm_label)}:", flush=True)
                swarms.append(bench.bittorrent(swarm_label, bench.consumers))
                show_bt(swarms[-1], size)
                print(f"  => ratio to one alone: {swarms[-1]['total'] / alones[-1]['total']:.2f}x "
                      f"(target <= {RATIO_TARGET}x); the seeder sent {swarms[-1]['seeder_upload'] / size:.2f} "
                      f"copies (target <= {SEEDER_TARGET}); load average {os.getloadavg()[0]:.2f}", flush=True)
            results["bt"] = (alones, swarms)

        if "http" in parts:
            http_server = Proc("http.server", in_ns(network.ns("seeder"), [
                PYTHON, "-m", "http.server", "--bind", SEEDER_IP, "--directory", str(root / "origin"),
                str(HTTP_PORT)]), root / "logs" / "http-server.log")
            url = f"http://{SEEDER_IP}:{HTTP_PORT}/{master.name}"
            wait_http(url, http_server)
            print("\nHTTP (curl on each consumer from python -m http.server on the seeder's host):", flush=True)
            h_alone = bench.http("alone", bench.consumers[:1], url)
            print(f"  one consumer alone: {h_alone['total']:.2f} s ({size / 1e6 / h_alone['total']:.1f} MB/s)",
                  flush=True)
            h_swarm = bench.http("swarm", bench.consumers, url)
            print(f"  {n} consumers at once: {h_swarm['total']:.2f} s (each: " + ", ".join(
                f"{h} {t:.1f} s" for h, t in sorted(h_swarm["each"].items())) + ")")
            print(f"  => ratio to one alone: {h_swarm['total'] / h_alone['total']:.2f}x (expected about {n}x)",
                  flush=True)
            http_server.stop()
            results["http"] = (h_alone, h_swarm)

        summary(args, size, n, results)
    except BenchError as e:
        print(f"\nbench/sync.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nbench/sync.py: interrupted; cleaning up", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup runs to its end
        Proc.stop_all()
        network.down()
        Network.remove_leftovers()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        note_in_lock(lock, None)
        lock.close()


#: one run at a time: a second one would delete the first one's namespaces
LOCK = Path("/run/lock") / f"{PREFIX}-bench-sync.lock"


def take_lock():
    """The lock file, held (flock) until closed or the process dies. It
    names the run's temporary directory while the run goes; one left there
    by a killed run (not with --keep) is removed."""
    import fcntl

    LOCK.parent.mkdir(parents=True, exist_ok=True)
    f = open(LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().split(" ")[0].strip()
        raise SystemExit(f"bench/sync.py: another run holds {LOCK} (pid {pid or '?'}); "
                         "wait for it, or stop it") from None
    f.seek(0)
    left = f.read().split()
    if len(left) == 3 and left[2] == "remove" and left[1].startswith(tempfile.gettempdir() + "/muppet-bench-sync-"):
        shutil.rmtree(left[1], ignore_errors=True)
    return f


def note_in_lock(lock, root: Path | None, keep: bool = False) -> None:
    lock.seek(0)
    lock.truncate()
    if root is not None:
        lock.write(f"{os.getpid()} {root} {'keep' if keep else 'remove'}")
    lock.flush()


def repeat_note(label: str) -> str:
    _, _, number = label.partition("-")[2].partition("-")
    return f", round {number}" if number else ""


def wait_http(url: str, server: Proc) -> None:
    """Until the HTTP server answers a HEAD request (from the first consumer)."""
    deadline = time.monotonic() + 30
    while subprocess.run(in_ns(Network.ns("c1"), ["curl", "-sSfI", "-o", "/dev/null", url]),
                         capture_output=True).returncode != 0:
        if server.popen.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"the HTTP server does not answer at {url}\n{server.tail()}")
        time.sleep(0.2)


if __name__ == "__main__":
    main()
