"""The documentation says what the program does.

Read as a new user reads them, docs/ and README.md make claims a test can
check: their links and the sections they cite exist; every `muppet` and
`muppet-sync` command and option is in docs/cli.md and every JSON-RPC method
in docs/api.md; the sessions and outputs they show are what the commands
print. Each failure names the document and the claim.

The examples that need a daemon run against one in-process (the API on a
free port), with a pipeline made to match what the document says produced
its output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import trio
import trio_websocket
from test_api import free_port  # tests/ is on sys.path
from waiting import wait_until_async

from muppet import daemon
from muppet.api.protocol import ERROR_NAMES, METHODS
from muppet.cli import main as muppet_main
from muppet.config import load_config
from sync.cli import main as sync_main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
#: the environment the commands run in: no daemon address or token from the
#: developer's shell
ENV = {k: v for k, v in os.environ.items() if k not in ("MUPPET_API", "MUPPET_TOKEN")}


def doc(name: str) -> str:
    return (ROOT / name).read_text()


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- markdown, as far as these tests need it -------------------------------------


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading outside fenced blocks."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.*)", line)):
            found.append((len(m[1]), m[2].strip()))
    return found


def plain(title: str) -> str:
    return title.replace("`", "").strip()


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces
    as hyphens."""
    return re.sub(r"[^\w\- ]", "", plain(title).lower()).replace(" ", "-")


def section(text: str, title: str) -> str:
    """The text under the heading ``title`` (compared without backticks), up
    to the next heading of the same or a higher level."""
    lines = text.splitlines()
    fenced, start, level = False, None, 0
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"(#{1,6}) (.*)", line)
        if m and start is not None and len(m[1]) <= level:
            return "\n".join(lines[start:i])
        if m and start is None and plain(m[2]) == plain(title):
            start, level = i + 1, len(m[1])
    if start is None:
        raise KeyError(title)
    return "\n".join(lines[start:])


def fenced_blocks(text: str, language: str | None = None) -> list[str]:
    """The fenced code blocks of ``text``; with ``language``, only those
    marked so (``""``: unmarked ones)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)
    return [body for lang, body in blocks if language is None or lang == language]


# --- links and cited sections -------------------------------------------------------


def test_every_relative_link_resolves():
    broken = []
    for path in DOCS:
        for text, target in re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{rel(path)}: [{text}]({target}): {file} does not exist")
            elif anchor and anchor not in {slug(t) for _, t in headings(linked.read_text())}:
                broken.append(f"{rel(path)}: [{text}]({target}): {rel(linked)} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


#: `docs/NAME.md, "Section"` or `NAME.md, "Section"`, in prose or in a comment
#: whose quote runs over a line break
CITATION = re.compile(r'\b((?:docs/)?[a-z_]+\.md),\s*(?:#\s*)?"([^"]{1,100})"')


def _cited_files() -> list[Path]:
    sources = list(DOCS)
    for folder in ("muppet", "sync", "tests", "bench"):
        sources += sorted((ROOT / folder).rglob("*.py"))
    return sources


def test_every_cited_document_and_section_exists():
    """"docs/api.md, "Objects"" in a document, a comment or a docstring names
    a section that a reader can find; "docs/X.md" alone names a file."""
    missing = []
    for path in _cited_files():
        text = path.read_text()
        for name in set(re.findall(r"\bdocs/[a-z_]+\.md\b", text)):
            if not (ROOT / name).exists():
                missing.append(f"{rel(path)}: cites {name}, which does not exist")
        for name, quoted in CITATION.findall(text):
            target = ROOT / name if name.startswith("docs/") else ROOT / "docs" / name
            if not target.exists():
                continue  # a file that is not a document (reported above when under docs/)
            title = re.sub(r"\s*\n\s*#?\s*", " ", quoted).strip()
            if "{" in title:
                continue  # a format string that builds a citation
            if plain(title) not in {plain(t) for _, t in headings(target.read_text())}:
                missing.append(f'{rel(path)}: cites {rel(target)}, "{title}": no such section')
    assert not missing, "\n".join(missing)


# --- the command line: every command and option in docs/cli.md ----------------------


def _commands(group: click.Group) -> dict[str, click.Command]:
    return {name: cmd for name, cmd in group.commands.items() if not cmd.hidden}


def _synopses(text: str, program: str, command: str) -> list[str]:
    """The lines of fenced blocks that start with ``program command``."""
    return [
        line for block in fenced_blocks(text) for line in block.splitlines()
        if line.split()[:2] == [program, command]
    ]


def _documented_options(line: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line))


def _check_command(program: str, name: str, command: click.Command, synopses: list[str], where: str) -> list[str]:
    if not synopses:
        return [f"{where}: no synopsis line `{program} {name} ...`"]
    problems = []
    named = set().union(*map(_documented_options, synopses))
    words = set(re.findall(r"[A-Z_]+", " ".join(synopses)))
    ctx = click.Context(command, info_name=name)
    known = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            opts = [*param.opts, *param.secondary_opts]
            known.update(opts)
            if not named & set(opts):
                problems.append(f"{where}: `{program} {name}` has {'/'.join(opts)}, not in its synopsis")
        else:
            metavar = param.make_metavar(ctx).strip("[].")
            if metavar not in words:
                problems.append(f"{where}: `{program} {name}` takes {metavar}, not in its synopsis")
    for option in sorted(named - known):
        problems.append(f"{where}: the synopsis of `{program} {name}` shows {option}, which it does not take")
    return problems


def test_every_muppet_command_and_option_is_in_cli_md():
    text = doc("docs/cli.md")
    problems = []
    for name, command in _commands(muppet_main).items():
        try:
            body = section(text, f"muppet {name}")
        except KeyError:
            problems.append(f"docs/cli.md: no section `## muppet {name}`")
            continue
        where = f'docs/cli.md, "muppet {name}"'
        problems += _check_command("muppet", name, command, _synopses(body, "muppet", name), where)
    for option in (p for p in muppet_main.params if isinstance(p, click.Option)):
        if not any(f"muppet {opt}" in text for opt in option.opts):
            problems.append(f"docs/cli.md: `muppet {option.opts[0]}` is not mentioned")
    assert not problems, "\n".join(problems)


def test_every_muppet_sync_command_and_option_is_in_cli_md():
    text = doc("docs/cli.md")
    body = section(text, "muppet-sync")
    problems = []
    for name, command in _commands(sync_main).items():
        where = 'docs/cli.md, "muppet-sync"'
        problems += _check_command("muppet-sync", name, command, _synopses(body, "muppet-sync", name), where)
    assert not problems, "\n".join(problems)


# --- the JSON-RPC methods: every one in docs/api.md --------------------------------


def _method_place(text: str, method: str) -> str | None:
    """Where docs/api.md documents ``method``: the section under a heading
    that names it, else the table row or the paragraph that names it."""
    for _, title in headings(text):
        if re.search(rf"(?<![\w.]){re.escape(method)}(?![\w.])", plain(title)):
            return section(text, title)
    for row in re.findall(r"^\|.*$", text, re.M):
        first = row.split("|")[1]
        if f"`{method}`" in first:
            return row
    # a paragraph or a list item that begins with the method's name
    for block in re.split(r"\n\s*\n|\n(?=- )", text):
        if re.match(rf"(- )?`{re.escape(method)}`", block.strip()):
            return block
    return None


def test_every_api_method_and_param_is_in_api_md():
    text = doc("docs/api.md")
    problems = []
    for name, spec in METHODS.items():
        place = _method_place(text, name)
        if place is None:
            problems.append(f"docs/api.md: method {name} is not documented")
            continue
        for param in spec.params:
            if f"`{param.name}`" not in place:
                problems.append(f"docs/api.md: method {name}: param `{param.name}` is not where {name} is described")
    namespaces = {name.split(".")[0] for name in METHODS}
    for mentioned in sorted(set(re.findall(r"`([a-z]+\.[a-z_]+)`", text))):
        if mentioned.split(".")[0] in namespaces and mentioned not in METHODS:
            problems.append(f"docs/api.md: names a method {mentioned}, which the daemon does not have")
    assert not problems, "\n".join(problems)


def test_every_error_code_is_in_api_md():
    errors = section(doc("docs/api.md"), "Errors")
    rows = {int(m[0]): m[1] for m in re.findall(r"^\| (-\d+) \| ([^|]+?) \|", errors, re.M)}
    problems = [
        f'docs/api.md, "Errors": code {code} ({name}) is {"missing" if code not in rows else "called " + rows[code]}'
        for code, name in ERROR_NAMES.items() if rows.get(code) != name
    ]
    problems += [f'docs/api.md, "Errors": code {code} does not exist' for code in rows if code not in ERROR_NAMES]
    assert not problems, "\n".join(problems)


# --- sessions that run without a daemon -------------------------------------------------


async def muppet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    with trio.fail_after(60):  # a safety net against a hang
        return await trio.run_process(
            [sys.executable, "-m", "muppet.cli", *args], cwd=cwd, env=ENV,
            capture_stdout=True, capture_stderr=True, check=False,
        )


async def run_session(block: str, cwd: Path, where: str) -> None:
    """Replay a ```console block: `$ cat FILE` writes the lines that follow
    into FILE, `$ muppet ...` must print the lines that follow (stdout, then
    stderr), `$ echo $?` must print the exit status of the command before."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    status = None
    for command, shown in steps:
        argv = command.split()
        if argv[0] == "cat":
            target = trio.Path(cwd / argv[1])
            await target.parent.mkdir(parents=True, exist_ok=True)
            await target.write_text("\n".join(shown) + "\n")
        elif argv == ["echo", "$?"]:
            assert shown == [str(status)], f"{where}: `{command}` shows {shown}, the exit status was {status}"
        elif argv[0] == "muppet":
            args = await trio.to_thread.run_sync(_glob, cwd, argv[1:])
            done = await muppet(*args, cwd=cwd)
            printed = (done.stdout + done.stderr).decode().splitlines()
            assert printed == shown, f"{where}: `{command}` printed\n" + "\n".join(printed)
            status = done.returncode
        else:
            raise AssertionError(f"{where}: the test cannot replay `{command}`")


def _glob(cwd: Path, args: list[str]) -> list[str]:
    """The shell's globbing of ``args`` in ``cwd``, sorted as bash sorts
    these names; a pattern that matches nothing stays as it is."""
    expanded = []
    for arg in args:
        matched = sorted(str(p.relative_to(cwd)) for p in cwd.glob(arg)) if "*" in arg else []
        expanded += matched or [arg]
    return expanded


def _conf_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    return tmp_path


@pytest.mark.parametrize("name", ["docs/configuration.md", "docs/cli.md"])
async def test_console_sessions_print_what_the_doc_shows(tmp_path, name):
    """Every ```console block, run in a directory that holds a copy of conf/."""
    blocks = fenced_blocks(doc(name), "console")
    assert blocks, f"{name} has no console session any more: drop it from this test"
    cwd = _conf_copy(tmp_path)
    for number, block in enumerate(blocks, 1):
        await run_session(block, cwd, f"{name}, console session {number}")


def _break_conf(cwd: Path) -> None:
    """The faults docs/configuration.md names for its example of problems."""
    daemon_file = cwd / "conf" / "muppet.toml"
    daemon_file.write_text(daemon_file.read_text().replace("[api]\n", '[api]\nlisten = "localhost"\n', 1))
    example = cwd / "conf" / "pipelines" / "example.toml"
    text = example.read_text()
    for old, new in (
        ('timezone = "UTC"', 'timezone = "Europe/Olso"'),
        ("[steps.fetch]\n", '[steps.fetch]\nparents = ["publish"]\n'),
        ("[steps.convert]\n", '[steps.convert]\nretry = { tries = "three" }\n'),
    ):
        assert old in text, f"conf/pipelines/example.toml changed: {old!r} is gone; update this test"
        text = text.replace(old, new, 1)
    example.write_text(text)


async def test_the_problems_example_of_configuration_md(tmp_path):
    """docs/configuration.md shows the lines `muppet validate` prints for four
    faults, and says the daemon refuses to start printing the same lines."""
    shown = next(
        block.splitlines() for block in fenced_blocks(doc("docs/configuration.md"), "text")
        if "conf/muppet.toml: [api] listen" in block
    )
    cwd = _conf_copy(tmp_path)
    await trio.to_thread.run_sync(_break_conf, cwd)
    done = await muppet("validate", "conf/muppet.toml", "conf/pipelines/example.toml", cwd=cwd)
    printed = done.stderr.decode().splitlines()
    assert (done.returncode, printed) == (1, shown), "docs/configuration.md: muppet validate printed\n" + "\n".join(
        printed)
    done = await muppet("daemon", "--config", "conf/muppet.toml", cwd=cwd)
    printed = done.stderr.decode().splitlines()
    claim = 'docs/cli.md, "muppet daemon": a bad configuration'
    assert done.returncode == 1, f"{claim}: exit status {done.returncode}"
    assert printed == [*shown, "muppet: error: 4 problem(s) in the configuration; not starting"], (
        f"{claim}: the daemon printed\n" + "\n".join(printed))


async def test_the_complete_example_of_configuration_md_is_valid(tmp_path):
    daemon_text, pipeline_text = fenced_blocks(section(doc("docs/configuration.md"), "Complete example"), "toml")
    folder = trio.Path(tmp_path)
    await (folder / "muppet.toml").write_text(daemon_text)
    await (folder / "pipelines").mkdir()
    await (folder / "pipelines" / "example.toml").write_text(pipeline_text)
    done = await muppet("validate", "muppet.toml", cwd=tmp_path)
    assert done.returncode == 0, 'docs/configuration.md, "Complete example":\n' + done.stderr.decode()


async def test_an_unreachable_daemon_is_one_line():
    text = re.sub(r"\s*\n\s*", " ", doc("docs/cli.md"))  # the message runs over a line break
    shown = re.search(r"`(muppet: error: cannot reach the MUPPET daemon at (ws://[\d.:]+): [^`]*)`", text)
    assert shown, 'docs/cli.md, "Common behaviour": the message for an unreachable daemon is gone'
    api = f"ws://127.0.0.1:{free_port()}"
    done = await muppet("runs", "--api", api)
    expected = shown[1].replace(shown[2], api)
    assert (done.returncode, done.stdout, done.stderr.decode()) == (1, b"", expected + "\n"), (
        f'docs/cli.md, "Common behaviour": an unreachable daemon gave exit {done.returncode}:\n'
        + done.stderr.decode())


def test_muppet_version_prints_the_version():
    assert "`muppet --version` prints the version" in doc("docs/cli.md")
    done = subprocess.run([sys.executable, "-m", "muppet.cli", "--version"], capture_output=True, text=True,
                          env=ENV, check=False)
    from importlib.metadata import version

    assert done.stdout.strip() == f"muppet, version {version('muppet')}", done.stdout


# --- outputs that need a daemon: one in-process --------------------------------------

# docs/cli.md, "muppet jobs": "a run of pipeline ecmwf (step fetch, then step
# convert with jobs = 2 and retry = { tries = 2 }) whose convert job 0 exits 3
# on both tries"
ECMWF = """
[stakeholders.ops]
name = "Operations"
[pipeline]
name = "ecmwf"
owner = "ops"
[steps.fetch]
command = "true"
[steps.convert]
parents = ["fetch"]
jobs = 2
command = '[ "$MUPPET_JOB_INDEX" = 1 ] || exit 3'
retry = { tries = 2 }
"""


@pytest.fixture
async def api(nursery, tmp_path):
    await trio.Path(tmp_path / "pipelines").mkdir()
    await trio.Path(tmp_path / "pipelines" / "ecmwf.toml").write_text(ECMWF)
    await trio.Path(tmp_path / "muppet.toml").write_text(textwrap.dedent(f"""
        [daemon]
        state_dir = "{tmp_path / 'state'}"
        pipelines = ["pipelines/*.toml"]
        [api]
        listen = "127.0.0.1:0"
        """))
    config = await trio.to_thread.run_sync(load_config, tmp_path / "muppet.toml")
    port = await nursery.start(daemon.serve, config)
    return f"ws://127.0.0.1:{port}"


def _shown(where: str, command: str) -> list[str]:
    """The lines a block of docs/cli.md shows under ``$ command``."""
    for block in fenced_blocks(section(doc("docs/cli.md"), where), ""):
        lines = block.splitlines()
        if lines and lines[0] == f"$ {command}":
            return lines[1:]
    raise AssertionError(f'docs/cli.md, "{where}": no example of `{command}` any more')


async def test_the_jobs_and_runs_tables_of_cli_md(api):
    run = await muppet("trigger", "ecmwf", "--reference-time", "2026-11-28T06:00Z", "--api", api)
    assert run.stdout == b"1\n", run.stderr.decode()

    async def ended() -> bool:
        runs = json.loads((await muppet("runs", "--json", "--api", api)).stdout)
        return runs[0]["state"] != "running"

    await wait_until_async(ended, 60, "the run of ecmwf ending")
    jobs = (await muppet("jobs", "1", "--api", api)).stdout.decode().splitlines()
    assert jobs == _shown("muppet jobs", "muppet jobs 1"), 'docs/cli.md, "muppet jobs": it printed\n' + "\n".join(
        jobs)
    # the runs table: its header, and the columns of a row that are not times
    runs = (await muppet("runs", "--api", api)).stdout.decode().splitlines()
    shown = _shown("muppet runs", "muppet runs")
    assert runs[0].split() == shown[0].split(), f'docs/cli.md, "muppet runs": the header is\n{runs[0]}'
    assert runs[1].split()[:6] == ["1", "ecmwf", "2026-11-28T06:00:00Z", "failed", "-", "manual"], runs
    status = (await muppet("status", "--api", api)).stdout.decode().splitlines()
    shown = _shown("muppet status", "muppet status")
    assert [line[:12] for line in status] == [line[:12] for line in shown], (
        'docs/cli.md, "muppet status": it printed\n' + "\n".join(status))
    assert status[2] == "pipelines   ecmwf"
    as_json = json.loads((await muppet("status", "--json", "--api", api)).stdout)
    assert isinstance(as_json, dict), 'docs/cli.md, "Common behaviour": status --json is one object'


def _exchanges(text: str) -> list[tuple[str, str]]:
    """The (request, reply) pairs of ``-->``/``<--`` lines in ``text``."""
    pairs, request = [], None
    for line in text.splitlines():
        if line.startswith("--> "):
            request = line[4:]
        elif line.startswith("<-- ") and request is not None:
            pairs.append((request, line[4:]))
            request = None
    return pairs


async def test_the_error_examples_of_api_md(api):
    """The replies docs/api.md shows for bad requests are the daemon's,
    message for message (they need no data)."""
    exchanges = _exchanges(section(doc("docs/api.md"), "Errors"))
    assert len(exchanges) >= 5, 'docs/api.md, "Errors": the examples are gone'
    async with trio_websocket.open_websocket_url(api) as ws:
        for request, shown in exchanges:
            await ws.send_message(request)
            with trio.fail_after(10):  # a safety net against a hang
                reply = json.loads(await ws.get_message())
            assert reply == json.loads(shown), f'docs/api.md, "Errors": {request} got\n{json.dumps(reply)}'
