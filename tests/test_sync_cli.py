"""muppet-sync's start-up errors (docs/sync.md, "Start-up errors"): each one
caused by the configuration or the environment is one line on stderr,
``muppet-sync: error: FILE: KEY: cause``, and exit status 1, never a
traceback; a bug keeps its traceback.

Every case runs the real command in its own process, except the last, which
puts a bug in on purpose."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from services import MISSING_HOST, free_port, no_such_name, service_missing  # tests/ is on sys.path
from waiting import wait_until

from sync import cli, preflight


def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sync.cli", *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line, after checking that it is the only thing said
    besides INFO log lines, with exit status 1 and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def config(tmp_path: Path, role: str = "seed", **keys: str) -> Path:
    """A seed or fetch file that works but for ``keys`` (TOML values), at an
    API nobody listens on (the daemon need not run for these checks)."""
    values = {"api": f'"ws://127.0.0.1:{free_port()}"', "state_dir": '"state"', "listen": '"127.0.0.1:0"'}
    if role == "fetch":
        values |= {"data_dir": '"data"', "backend": '"thredds-1"'}
    values |= keys
    text = "".join(f"{key} = {value}\n" for key, value in values.items())
    return write(tmp_path / f"{role}.toml", text + '[[select]]\nproducts = ["arome-pp"]\nrecent = 2\n')


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system (a tmpfs mounted ro: root ignores modes)."""
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        service_missing(f"cannot mount a read-only tmpfs: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


# --- host names ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ["seed", "fetch"])
@pytest.mark.parametrize("listen", ["0.0.0.0:0", "127.0.0.1:0"], ids=["wildcard", "specific"])
def test_an_api_host_that_does_not_resolve(tmp_path, role, listen):
    # with a wildcard listen address the own address is worked out by the
    # route to the api host: that was a 40-line ExceptionGroup
    why = no_such_name()
    path = config(tmp_path, role, api=f'"ws://{MISSING_HOST}:8765"', listen=f'"{listen}"')
    assert one_line(run(role, "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: api: host '{MISSING_HOST}' does not resolve ({why})"
    )


def test_the_shipped_example_with_its_host_missing(tmp_path):
    """conf/sync-seed.toml as shipped, on a host where lustre-host is unknown."""
    why = no_such_name()
    text = (Path(__file__).parent.parent / "conf" / "sync-seed.toml").read_text()
    text = text.replace("lustre-host", MISSING_HOST).replace("/var/lib/muppet-sync", str(tmp_path / "state"))
    path = write(tmp_path / "sync-seed.toml", text)
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: api: host '{MISSING_HOST}' does not resolve ({why})"
    )


def test_advertise_and_tracker_hosts_that_do_not_resolve_one_line_each(tmp_path):
    why = no_such_name()
    path = config(tmp_path, advertise=f'"{MISSING_HOST}:6881"',
                  trackers=f'["http://{MISSING_HOST}:6969/announce"]')
    result = run("seed", "--config", str(path), cwd=tmp_path)
    assert "Traceback" not in result.stderr and result.returncode == 1
    assert [line for line in result.stderr.splitlines() if " INFO " not in line] == [
        f"muppet-sync: error: {path}: advertise: host '{MISSING_HOST}' does not resolve ({why})",
        f"muppet-sync: error: {path}: trackers: host '{MISSING_HOST}' does not resolve ({why})",
    ]


# --- the listen address -------------------------------------------------------------


def test_a_listen_interface_this_host_lacks(tmp_path):
    path = config(tmp_path, listen='"nosuchif0:6881"')
    interfaces = ", ".join(sorted(name for _, name in socket.if_nameindex()))
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: listen: 'nosuchif0' is neither an IP address nor a network interface "
        f"of this host (it has {interfaces})"
    )


@pytest.mark.parametrize("role", ["seed", "fetch"])
def test_a_listen_address_in_use(tmp_path, role):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = config(tmp_path, role, listen=f'"127.0.0.1:{port}"')
        assert one_line(run(role, "--config", str(path), cwd=tmp_path)) == (
            f"muppet-sync: error: {path}: listen: cannot listen on 127.0.0.1:{port}: Address already in use"
        )


def test_a_listen_address_not_of_this_host(tmp_path):
    path = config(tmp_path, listen='"192.0.2.1:6881"')  # RFC 5737 TEST-NET-1
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: listen: cannot listen on 192.0.2.1:6881: Cannot assign requested address"
    )


def with_metrics(path: Path, listen: str) -> Path:
    return write(path, path.read_text() + f'[metrics]\nlisten = "{listen}"\n')


@pytest.mark.parametrize("role", ["seed", "fetch"])
def test_a_metrics_address_in_use(tmp_path, role):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = with_metrics(config(tmp_path, role), f"127.0.0.1:{port}")
        assert one_line(run(role, "--config", str(path), cwd=tmp_path)) == (
            f"muppet-sync: error: {path}: [metrics] listen: cannot listen on http://127.0.0.1:{port}: "
            'Address already in use (another daemon there? choose another address, or listen = "" for no '
            "/metrics and /healthz)"
        )


def test_a_metrics_address_not_of_this_host_or_not_resolving(tmp_path):
    path = with_metrics(config(tmp_path), "192.0.2.1:8781")  # RFC 5737 TEST-NET-1
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: [metrics] listen: cannot listen on http://192.0.2.1:8781: "
        "Cannot assign requested address (not an address of this host: give one of its own, or 0.0.0.0 for "
        'all of them, or listen = "" for no /metrics and /healthz)'
    )
    why = no_such_name()
    path = with_metrics(config(tmp_path), f"{MISSING_HOST}:8781")
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: [metrics] listen: cannot listen on http://{MISSING_HOST}:8781: "
        f"{why} (the host name does not resolve here: give an address, or a name this host resolves, "
        'or listen = "" for no /metrics and /healthz)'
    )


def test_a_port_out_of_range(tmp_path):
    path = config(tmp_path, listen='"0.0.0.0:70000"')
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f'muppet-sync: error: {path}: listen: ports must be 0-65535, got "0.0.0.0:70000"'
    )


# --- directories and files ----------------------------------------------------------


@pytest.mark.parametrize("role", ["seed", "fetch"])
def test_a_state_dir_under_a_file(tmp_path, role):
    (tmp_path / "plain").write_text("x")
    path = config(tmp_path, role, state_dir='"plain/state"')
    assert one_line(run(role, "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: state_dir: cannot make {tmp_path / 'plain' / 'state'}: Not a directory"
    )


def test_a_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    path = config(tmp_path, state_dir='"plain"')
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: state_dir: {tmp_path / 'plain'} is not a directory"
    )


def test_a_state_dir_on_a_read_only_file_system(tmp_path, read_only):
    path = config(tmp_path, state_dir=f'"{read_only / "state"}"')
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: state_dir: cannot make {read_only / 'state'}: Read-only file system"
    )
    # the directory exists, but nothing can be written in it
    path = config(tmp_path, state_dir=f'"{read_only}"')
    assert one_line(run("seed", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: state_dir: cannot write in {read_only}: Read-only file system"
    )


def test_a_data_dir_that_cannot_be_made_or_written(tmp_path, read_only):
    (tmp_path / "plain").write_text("x")
    path = config(tmp_path, "fetch", data_dir='"plain/data"')
    assert one_line(run("fetch", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: data_dir: cannot make {tmp_path / 'plain' / 'data'}: Not a directory"
    )
    path = config(tmp_path, "fetch", data_dir=f'"{read_only}"')
    assert one_line(run("fetch", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: data_dir: cannot write in {read_only}: Read-only file system"
    )


def test_an_on_complete_program_that_is_not_installed(tmp_path):
    path = config(tmp_path, "fetch", on_complete='"/usr/local/bin/no-such-rescan --now"')
    assert one_line(run("fetch", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: on_complete: no program /usr/local/bin/no-such-rescan"
    )
    path = config(tmp_path, "fetch", on_complete='"no-such-rescan"')
    assert one_line(run("fetch", "--config", str(path), cwd=tmp_path)) == (
        f"muppet-sync: error: {path}: on_complete: no program 'no-such-rescan' on the PATH"
    )


def test_an_unreadable_state_file(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text("{half")
    path = config(tmp_path)
    line = one_line(run("seed", "--config", str(path), cwd=tmp_path))
    assert line.startswith(f"muppet-sync: error: {path}: state_dir: {tmp_path / 'state' / 'state.json'}: "
                           "unreadable state (")
    assert line.endswith("); move it away to start afresh")


@pytest.mark.parametrize("role", ["seed", "fetch", "status"])
def test_a_configuration_file_missing_or_a_directory(tmp_path, role):
    missing = tmp_path / "missing.toml"
    assert one_line(run(role, "--config", str(missing), cwd=tmp_path)) == (
        f"muppet-sync: error: {missing}: no such file"
    )
    assert one_line(run(role, "--config", str(tmp_path), cwd=tmp_path)) == (
        f"muppet-sync: error: {tmp_path}: is a directory, not a TOML file"
    )


def test_every_problem_of_a_file_is_a_line_of_its_own(tmp_path):
    path = write(tmp_path / "seed.toml", """
        api = "http://index:8765"
        state_dir = "state"
        listen = "0.0.0.0:70000"
        [[select]]
        products = ["arome-pp"]
        recent = 2
        """)
    result = run("seed", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f'muppet-sync: error: {path}: api: must be the index\'s WebSocket URL (ws://HOST:PORT or wss://...), '
        'got "http://index:8765"',
        f'muppet-sync: error: {path}: listen: ports must be 0-65535, got "0.0.0.0:70000"',
    ]


# --- status, torrent, torrent-file ----------------------------------------------------


def test_status_of_a_state_dir_that_is_a_file_or_holds_no_status(tmp_path):
    (tmp_path / "plain").write_text("x")
    assert one_line(run("status", "--state-dir", str(tmp_path / "plain"), cwd=tmp_path)) == (
        f"muppet-sync: error: --state-dir: {tmp_path / 'plain'} is not a directory"
    )
    (tmp_path / "state" / "status.json").mkdir(parents=True)
    assert one_line(run("status", "--state-dir", str(tmp_path / "state"), cwd=tmp_path)) == (
        f"muppet-sync: error: {tmp_path / 'state' / 'status.json'}: cannot read: Is a directory"
    )


@pytest.mark.parametrize(("api", "line"), [
    ("http://index:8765",
     "--api: must be the daemon's API as ws://HOST:PORT or wss://HOST:PORT, got 'http://index:8765'"),
    ("ws://index:99999", "--api: 'ws://index:99999': Port out of range 0-65535"),
])
def test_torrent_with_a_bad_api_url(tmp_path, api, line):
    result = run("torrent", "1", "--output", str(tmp_path / "f.torrent"), "--api", api, cwd=tmp_path)
    assert one_line(result) == f"muppet-sync: error: {line}"


def test_torrent_names_the_environment_variable_it_read(tmp_path):
    env = {**os.environ, "MUPPET_API": "ws://index:99999"}
    result = run("torrent", "1", "--output", str(tmp_path / "f.torrent"), cwd=tmp_path, env=env)
    assert one_line(result) == "muppet-sync: error: MUPPET_API: 'ws://index:99999': Port out of range 0-65535"


def test_torrent_with_no_daemon(tmp_path):
    port = free_port()
    result = run("torrent", "1", "-o", str(tmp_path / "f.torrent"), "--api", f"ws://127.0.0.1:{port}", cwd=tmp_path)
    assert one_line(result) == f"muppet-sync: error: cannot reach the MUPPET daemon at ws://127.0.0.1:{port}: " \
        "connection refused"


def test_torrent_file_with_an_output_that_cannot_be_written(tmp_path, read_only):
    data = tmp_path / "x.nc"
    data.write_bytes(b"x" * 1000)
    out = tmp_path / "nodir" / "x.torrent"
    assert one_line(run("torrent-file", str(data), "--output", str(out), cwd=tmp_path)) == (
        f"muppet-sync: error: --output: cannot write {out}: No such file or directory"
    )
    out = read_only / "x.torrent"
    assert one_line(run("torrent-file", str(data), "--output", str(out), cwd=tmp_path)) == (
        f"muppet-sync: error: --output: cannot write {out}: Read-only file system"
    )


def test_torrent_file_of_a_missing_file(tmp_path):
    missing = tmp_path / "missing.nc"
    result = run("torrent-file", str(missing), "--output", str(tmp_path / "x.torrent"), cwd=tmp_path)
    assert one_line(result) == f"muppet-sync: error: {missing}: not a regular file, cannot make a torrent of it"


# --- the index's answer at start ------------------------------------------------------


async def test_a_backend_the_index_does_not_know(tmp_path):
    from muppet import daemon
    from muppet.config import load_config

    write(tmp_path / "muppet.toml", f"""
        [daemon]
        database = "sqlite:///{tmp_path / 'muppet.db'}"
        state_dir = "{tmp_path / 'daemon-state'}"
        [api]
        listen = "127.0.0.1:0"
        [backends.lustre-a]
        name = "Lustre A"
        url = "file:///lustre/a"
        """)
    settings = await trio.to_thread.run_sync(load_config, tmp_path / "muppet.toml")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.serve, settings)
        path = config(tmp_path, "fetch", api=f'"ws://127.0.0.1:{port}"')
        result = await trio.run_process([sys.executable, "-m", "sync.cli", "fetch", "--config", str(path)],
                                        cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    done = subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())
    assert one_line(done) == (
        f"muppet-sync: error: {path}: backend: 'thredds-1' is not in the index at ws://127.0.0.1:{port} "
        "(it has: local, lustre-a); declare [backends.thredds-1] with its url in the daemon's configuration, "
        "or define it with backends.define"
    )


# --- a bug is not an operator's error ------------------------------------------------


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(config):
        raise ZeroDivisionError("a bug in the checks")

    monkeypatch.setattr(preflight, "check_environment", broken)
    path = config(tmp_path)
    result = CliRunner().invoke(cli.main, ["seed", "--config", str(path)])
    # it comes out of the command as itself (not wrapped in the nursery's
    # group, not turned into one line): click's caller prints its traceback
    assert isinstance(result.exception, ZeroDivisionError), result.output
    assert "muppet-sync: error" not in result.output


@pytest.mark.parametrize("role", ["seed", "fetch"])
def test_a_state_dir_held_by_another_process(tmp_path, role):
    """Two processes on one state directory would follow, place and record
    over each other: the second is refused, naming the first."""
    path = config(tmp_path, role)
    first = subprocess.Popen([sys.executable, "-m", "sync.cli", role, "--config", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        lock = tmp_path / "state" / "lock"
        wait_until(lambda: lock.exists() and f'"pid": {first.pid}' in lock.read_text(), 30,
                   "the first process holding the state directory")
        line = one_line(run(role, "--config", str(path), cwd=tmp_path))
        assert line.startswith(f"muppet-sync: error: {path}: state_dir: {tmp_path / 'state'} is in use by "
                               f"muppet-sync {role} (pid {first.pid} on {socket.gethostname()}, since "), line
        assert line.endswith("): one seed or fetch per state_dir; stop that one first, or give this one "
                             "another state_dir"), line
    finally:
        first.terminate()
        first.wait(timeout=30)
    # gone with its process: a new one takes it
    again = subprocess.Popen([sys.executable, "-m", "sync.cli", role, "--config", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_until(lambda: f'"pid": {again.pid}' in lock.read_text(), 30, "a new process holding it")
    finally:
        again.terminate()
        again.wait(timeout=30)
