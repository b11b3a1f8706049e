"""muppet.config: TOML files -> the model, and every problem named by file, table, key."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from muppet.config import (
    ConfigError,
    Problem,
    default_config,
    load_config,
    sqlite_path,
    validate_paths,
)
from muppet.model import Depends, ExecutorConfig, RetryPolicy

REPO = Path(__file__).resolve().parent.parent

GOOD_PIPELINE = """
[stakeholders.ops]
name = "Operations"
email = "ops@example.org"

[pipeline]
name = "example"
owner = "ops"
requires = []
produces = ["example-product"]
cron = ["15 */6 * * *"]
timezone = "UTC"

[steps.fetch]
command = "echo fetching"

[steps.convert]
parents = ["fetch"]
jobs = 4
depends = "all"
concurrency = 2
conflicts = ["cleanup"]
command = "convert.sh $MUPPET_JOB_INDEX"
env = { LEVEL = "surface" }
executor = "local"
outputs = ["out/{reference_time:%Y%m%dT%H}/part_{index:02d}.txt"]
retry = { tries = 3, interval = 5.0, factor = 2.0 }

[steps.cleanup]
command = "echo cleaning"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


#: the product GOOD_PIPELINE produces, declared as a daemon file must
EXAMPLE_PRODUCT = '[products.example-product]\nname = "Example"\n'


def setup(tmp_path: Path, pipeline: str | None = None, daemon: str = "", **more: str) -> Path:
    """A daemon file listing pipelines/*.toml, with one pipeline file and more."""
    daemon = textwrap.dedent(daemon)
    if "[products." not in daemon:
        daemon += EXAMPLE_PRODUCT
    conf = write(tmp_path / "muppet.toml", '[daemon]\npipelines = ["pipelines/*.toml"]\n' + daemon)
    if pipeline is not None:
        write(tmp_path / "pipelines" / "p.toml", pipeline)
    for name, text in more.items():
        write(tmp_path / "pipelines" / f"{name}.toml", text)
    return conf


def problems_of(conf: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return caught.value.problems


def find(problems: list[Problem], table: str, key: str, *words: str) -> Problem:
    """The one problem at table/key whose message has every word; fails listing all."""
    hits = [p for p in problems if p.table == table and p.key == key and all(w in p.message for w in words)]
    assert len(hits) == 1, f"want [{table}] {key} {words} in:\n" + "\n".join(map(str, problems))
    return hits[0]


def pipeline_with(step_body: str, head: str = "") -> str:
    """A valid pipeline with its [steps.convert] (child of fetch) replaced."""
    return textwrap.dedent(
        f"""
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "p"
        owner = "ops"
        {head}
        [steps.fetch]
        command = "echo fetch"
        jobs = 4
        [steps.convert]
        """
    ) + textwrap.dedent(step_body)


# --- loading what is right ------------------------------------------------------


def test_contract_example_loads(tmp_path):
    conf = setup(tmp_path, GOOD_PIPELINE)
    config = load_config(conf)
    assert config.source == str(conf)
    p = config.pipelines["example"]
    assert p.owner == "ops" and p.produces == ("example-product",) and p.requires == ()
    assert p.cron == ("15 */6 * * *",) and p.timezone == "UTC"
    assert p.source == str(tmp_path / "pipelines" / "p.toml")
    convert = p.steps["convert"]
    assert convert.parents == ("fetch",)
    assert convert.jobs == 4 and convert.depends is Depends.ALL and convert.concurrency == 2
    assert convert.conflicts == ("cleanup",)
    assert convert.env == {"LEVEL": "surface"}
    assert convert.executor == "local"
    assert convert.outputs == ("out/{reference_time:%Y%m%dT%H}/part_{index:02d}.txt",)
    assert convert.retry == RetryPolicy(tries=3, interval=5.0, factor=2.0)
    assert isinstance(convert.retry.interval, float)
    fetch = p.steps["fetch"]
    assert fetch.jobs == 1 and fetch.concurrency is None and fetch.retry == RetryPolicy()
    assert config.stakeholders["ops"].name == "Operations"
    assert config.stakeholders["ops"].email == "ops@example.org"


def test_steps_in_topological_order_ties_in_file_order(tmp_path):
    conf = setup(
        tmp_path,
        """
        [stakeholders.ops]
        [pipeline]
        name = "p"
        owner = "ops"
        [steps.publish]
        parents = ["b", "a"]
        command = "true"
        [steps.b]
        parents = ["root"]
        command = "true"
        [steps.lonely]
        command = "true"
        [steps.a]
        parents = ["root"]
        command = "true"
        [steps.root]
        command = "true"
        """,
    )
    steps = list(load_config(conf).pipelines["p"].steps)
    assert steps == ["lonely", "root", "b", "a", "publish"]


def test_empty_file_gives_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    conf = write(tmp_path / "muppet.toml", "")
    config = load_config(conf)
    state = str(tmp_path / "xdg" / "muppet")
    assert config.daemon.state_dir == state
    assert config.daemon.output_dir == os.path.join(state, "output")
    assert config.daemon.database == "sqlite:///" + os.path.join(state, "muppet.db")
    assert sqlite_path(config.daemon.database) == os.path.join(state, "muppet.db")
    assert config.api.listen == "127.0.0.1:8765"
    assert config.api.host == "127.0.0.1" and config.api.port == 8765
    assert config.executors == {"local": ExecutorConfig("local", "local", max_jobs=os.cpu_count() or 2)}
    assert config.pipelines == {} and config.stakeholders == {}
    assert default_config().daemon == config.daemon
    assert default_config().executors == config.executors


def test_default_state_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_config().daemon.state_dir == str(tmp_path / ".local" / "state" / "muppet")
    # The XDG spec says a relative value is invalid and is ignored.
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")
    assert default_config().daemon.state_dir == str(tmp_path / ".local" / "state" / "muppet")
    assert default_config().pipelines == {}


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    conf = write(
        tmp_path / "etc" / "muppet.toml",
        """
        [daemon]
        state_dir = "state"
        output_dir = "../out"
        database = "sqlite:///db/muppet.db"
        pipelines = ["pipelines/*.toml"]
        """ + EXAMPLE_PRODUCT,
    )
    write(tmp_path / "etc" / "pipelines" / "p.toml", GOOD_PIPELINE)
    monkeypatch.chdir(tmp_path / "etc" / "pipelines")  # the working directory must not matter
    config = load_config(conf)
    assert config.daemon.state_dir == str(tmp_path / "etc" / "state")
    assert config.daemon.output_dir == str(tmp_path / "out")
    assert config.daemon.database == "sqlite:///" + str(tmp_path / "etc" / "db" / "muppet.db")
    assert config.daemon.pipeline_globs == (str(tmp_path / "etc" / "pipelines" / "*.toml"),)
    assert list(config.pipelines) == ["example"]


def test_defaults_follow_a_given_state_dir(tmp_path):
    conf = write(tmp_path / "muppet.toml", '[daemon]\nstate_dir = "/srv/muppet"\n')
    config = load_config(conf)
    assert config.daemon.output_dir == "/srv/muppet/output"
    assert config.daemon.database == "sqlite:////srv/muppet/muppet.db"


def test_absolute_sqlite_and_postgresql_urls(tmp_path):
    conf = write(tmp_path / "a.toml", '[daemon]\ndatabase = "sqlite:////var/lib/muppet/m.db"\n')
    assert load_config(conf).daemon.database == "sqlite:////var/lib/muppet/m.db"
    url = "postgresql://muppet@db.example.org:5433/muppet"
    conf = write(tmp_path / "b.toml", f'[daemon]\ndatabase = "{url}"\n')
    assert load_config(conf).daemon.database == url
    assert sqlite_path(url) is None


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    conf = write(tmp_path / "muppet.toml", '[daemon]\nstate_dir = "~/muppet"\n')
    assert load_config(conf).daemon.state_dir == str(tmp_path / "home" / "muppet")


def test_executors(tmp_path):
    conf = setup(
        tmp_path,
        None,
        """
        [api]
        listen = "[::1]:0"
        [executors.cluster]
        type = "slurm"
        max_jobs = 50
        partition = "short"
        cpus = 4
        memory = "4G"
        walltime = 3600
        submit_options = ["--account=weather", "--qos=high"]
        poll_interval = 2
        account = "weather"
        submit_timeout = 30
        max_submit_backoff = 60.0
        [executors.sge]
        type = "gridengine"
        queue = "all.q"
        slots = 2
        parallel_environment = "smp"
        """,
    )
    config = load_config(conf)
    assert config.api.host == "::1" and config.api.port == 0
    assert set(config.executors) == {"local", "cluster", "sge"}
    cluster = config.executors["cluster"]
    assert cluster.type == "slurm" and cluster.max_jobs == 50
    assert cluster.options == {
        "partition": "short",
        "cpus": 4,
        "memory": "4G",
        "walltime": 3600,
        "submit_options": ["--account=weather", "--qos=high"],
        "poll_interval": 2.0,
        "account": "weather",
        "submit_timeout": 30.0,
        "max_submit_backoff": 60.0,
    }
    sge = config.executors["sge"]
    assert sge.max_jobs == 8 and sge.options == {"queue": "all.q", "slots": 2, "parallel_environment": "smp"}


def test_local_executor_can_be_redefined(tmp_path):
    conf = setup(tmp_path, None, '[executors.local]\ntype = "local"\nmax_jobs = 3\n')
    assert load_config(conf).executors == {"local": ExecutorConfig("local", "local", max_jobs=3)}


def test_a_local_executor_names_the_bash_its_jobs_run_under(tmp_path):
    conf = setup(tmp_path, None, '[executors.local]\ntype = "local"\nbash = "/bin/bash"\n')
    assert load_config(conf).executors["local"].options == {"bash": "/bin/bash"}


def test_step_resources_and_other_executor(tmp_path):
    conf = setup(
        tmp_path,
        pipeline_with(
            """
            command = "run"
            executor = "cluster"
            resources = { partition = "gpu", cpus = 8, memory = 16000, submit_options = ["-x"] }
            """
        ),
        '[executors.cluster]\ntype = "slurm"\n',
    )
    step = load_config(conf).pipelines["p"].steps["convert"]
    assert step.executor == "cluster"
    assert step.resources == {"partition": "gpu", "cpus": 8, "memory": 16000, "submit_options": ["-x"]}


@pytest.mark.parametrize(
    "memory, walltime",
    [
        ('"4G"', '"01:30:00"'),
        ('"512M"', '"30:00"'),
        ('"1.5GiB"', '"1-12"'),
        ('"16GB"', '"2-00:00:00"'),
        ("4096", "5400"),
        ('"300"', '"1-06:30"'),
    ],
)
def test_good_resource_values_are_kept_as_written(tmp_path, memory, walltime):
    """The forms docs/configuration.md lists; the executor parses them again."""
    conf = setup(
        tmp_path,
        pipeline_with(
            f'command = "run"\nexecutor = "cluster"\nresources = {{ memory = {memory}, walltime = {walltime} }}\n'
        ),
        f'[executors.cluster]\ntype = "slurm"\nmemory = {memory}\nwalltime = {walltime}\n',
    )
    config = load_config(conf)
    written = tomllib.loads(f"memory = {memory}\nwalltime = {walltime}")
    assert config.pipelines["p"].steps["convert"].resources == written
    assert config.executors["cluster"].options == written


#: bad resource values: the line, then words of the message
BAD_RESOURCES = [
    ('memory = "lots"', "memory", ('a size such as "4G", "512M" or "1.5GiB"', 'got "lots"')),
    ('memory = "4 GB RAM"', "memory", ("a size",)),
    ('memory = "4B"', "memory", ("a size",)),
    ('memory = "0G"', "memory", ("at least one byte",)),
    ("memory = 0", "memory", ("a string or an integer >= 1", "got 0")),
    ("memory = 1.5", "memory", ("a string or an integer >= 1", "got 1.5")),
    ('walltime = "1h"', "walltime", ('"H:MM:SS", "MM:SS", "D-HH[:MM[:SS]]"', 'got "1h"')),
    ('walltime = "90"', "walltime", ("minutes to Slurm and seconds to Grid Engine",)),
    ('walltime = "1:xx:00"', "walltime", ('"H:MM:SS"',)),
    ('walltime = "0:00:00"', "walltime", ("at least one second",)),
    ("walltime = 1.5", "walltime", ("a string or an integer >= 1",)),
    ("walltime = true", "walltime", ("a string or an integer >= 1", "got true")),
    ("slots = 0", "slots", ("an integer >= 1", "got 0")),
    ('cpus = "4"', "cpus", ("an integer >= 1",)),
    ('queue = ""', "queue", ("must not be empty",)),
    ('submit_options = "-x"', "submit_options", ("list of strings",)),
]


@pytest.mark.parametrize("line, key, words", BAD_RESOURCES)
def test_bad_step_resource_values(tmp_path, line, key, words):
    """Refused by the loader, as the executor would refuse them at submission."""
    conf = setup(tmp_path, pipeline_with(f'command = "x"\nresources = {{ {line} }}\n'))
    problem = find(problems_of(conf), "steps.convert", f"resources.{key}", *words)
    assert problem.file == str(tmp_path / "pipelines" / "p.toml")
    assert str(problem).startswith(f"{problem.file}: [steps.convert] resources.{key}: must ")


@pytest.mark.parametrize("line, key, words", BAD_RESOURCES)
def test_bad_executor_resource_values(tmp_path, line, key, words):
    conf = write(tmp_path / "muppet.toml", f'[executors.cluster]\ntype = "gridengine"\n{line}\n')
    problem = find(problems_of(conf), "executors.cluster", key, *words)
    assert str(problem).startswith(f"{conf}: [executors.cluster] {key}: must ")


def test_muppet_validate_names_file_table_and_key_of_a_bad_resource(tmp_path):
    """`muppet validate` on the daemon file and on the pipeline file alone."""
    conf = setup(
        tmp_path,
        pipeline_with('command = "x"\nexecutor = "cluster"\nresources = { walltime = "1h" }\n'),
        '[executors.cluster]\ntype = "slurm"\nmemory = "lots"\n',
    )
    pipeline = tmp_path / "pipelines" / "p.toml"
    for paths, expected in (
        ([conf], [
            f'{conf}: [executors.cluster] memory: must be a size such as "4G", "512M" or "1.5GiB", '
            'or a whole number of megabytes, got "lots"',
            f'{pipeline}: [steps.convert] resources.walltime: must be "H:MM:SS", "MM:SS", "D-HH[:MM[:SS]]" '
            'or a whole number of seconds, got "1h"',
        ]),
        ([pipeline], [
            f'{pipeline}: [steps.convert] resources.walltime: must be "H:MM:SS", "MM:SS", "D-HH[:MM[:SS]]" '
            'or a whole number of seconds, got "1h"',
        ]),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "muppet.cli", "validate", *map(str, paths)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert done.stderr.splitlines() == expected


def test_an_output_without_reference_time_is_a_warning(tmp_path):
    """Every run would write the same path: allowed, but said (docs/index.md,
    "Versions": the index keeps the newest file only)."""
    conf = setup(tmp_path, GOOD_PIPELINE.replace("out/{reference_time:%Y%m%dT%H}/part_{index:02d}.txt",
                                                 "out/part_{index:02d}.txt"))
    pipeline = tmp_path / "pipelines" / "p.toml"
    config = load_config(conf)
    expected = (
        f'{pipeline}: [steps.convert] outputs: warning: "out/part_{{index:02d}}.txt": without '
        "{reference_time} every run writes the same path, and each run's file replaces the one before "
        "(the index keeps only the newest)"
    )
    assert config.warnings == (expected,)
    done = subprocess.run(
        [sys.executable, "-m", "muppet.cli", "validate", str(conf)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "1 file OK (1 warning)\n", expected + "\n")


def test_depends_each_with_equal_jobs(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\nparents = ["fetch"]\njobs = 4\ndepends = "each"\n'))
    assert load_config(conf).pipelines["p"].steps["convert"].depends is Depends.EACH


def test_stakeholders_are_shared_across_files(tmp_path):
    conf = setup(
        tmp_path,
        None,
        '[stakeholders.ops]\nname = "Operations"\nemail = "ops@example.org"\n',
        a='[pipeline]\nname = "a"\nowner = "ops"\n[steps.s]\ncommand = "true"\n',
        b='[stakeholders.ops]\nname = "Operations"\nemail = "ops@example.org"\n'
        '[stakeholders.dev]\n[pipeline]\nname = "b"\nowner = "dev"\n[steps.s]\ncommand = "true"\n',
    )
    config = load_config(conf)
    assert list(config.pipelines) == ["a", "b"]
    assert config.stakeholders["dev"].name == "dev"  # the name defaults to the key
    assert set(config.stakeholders) == {"ops", "dev"}


def test_globs_sorted_deduplicated_and_literal(tmp_path):
    conf = write(tmp_path / "muppet.toml", '[daemon]\npipelines = ["p/*.toml", "p/a.toml", "q/**/*.toml"]\n')
    body = '[stakeholders.o]\n[pipeline]\nname = "{}"\nowner = "o"\n[steps.s]\ncommand = "true"\n'
    for rel, name in [("p/b.toml", "b"), ("p/a.toml", "a"), ("q/x/y/c.toml", "c")]:
        write(tmp_path / rel, body.format(name))
    assert list(load_config(conf).pipelines) == ["a", "b", "c"]


def test_glob_matching_nothing_is_fine_but_a_missing_file_is_not(tmp_path):
    conf = write(tmp_path / "muppet.toml", '[daemon]\npipelines = ["none/*.toml"]\n')
    assert load_config(conf).pipelines == {}
    conf = write(tmp_path / "muppet.toml", '[daemon]\npipelines = ["missing.toml"]\n')
    find(problems_of(conf), "daemon", "pipelines", '"missing.toml": no such file')


# --- the shipped example ---------------------------------------------------------


def test_shipped_example_configuration_loads():
    config = load_config(REPO / "conf" / "muppet.toml")
    assert set(config.pipelines) >= {"example", "summary"}
    example = config.pipelines["example"]
    assert list(example.steps) == ["fetch", "convert", "publish"]
    assert example.steps["convert"].jobs == 3
    assert any(s.retry.tries > 1 for p in config.pipelines.values() for s in p.steps.values())
    assert validate_paths([str(REPO / "conf" / "muppet.toml")]) == []
    pipeline_files = sorted(str(p) for p in (REPO / "conf" / "pipelines").glob("*.toml"))
    assert validate_paths(pipeline_files) == []


def test_shipped_example_commands_succeed_and_write_their_outputs(tmp_path):
    """Each step's command, run by sh as a job would be, makes its declared outputs."""
    reference_time = datetime(2026, 11, 28, 6, 15, tzinfo=UTC)
    config = load_config(REPO / "conf" / "muppet.toml")
    for pipeline in config.pipelines.values():
        for step in pipeline.steps.values():
            for index in range(step.jobs):
                scratch = tmp_path / pipeline.name / step.name / str(index)
                scratch.mkdir(parents=True)
                env = dict(
                    os.environ,
                    **step.env,
                    MUPPET_SCRATCH=str(scratch),
                    MUPPET_JOB_DIR=str(scratch),
                    MUPPET_RUN_ID="1",
                    MUPPET_JOB_ID="1",
                    MUPPET_JOB_INDEX=str(index),
                    MUPPET_JOB_COUNT=str(step.jobs),
                    MUPPET_REFERENCE_TIME="2026-11-28T06:15:00Z",
                )
                done = subprocess.run(
                    ["/bin/sh", "-e", "-c", step.command], env=env, cwd=scratch, capture_output=True, timeout=60
                )
                assert done.returncode == 0, (pipeline.name, step.name, done.stderr)
                for pattern in step.outputs:
                    out = scratch / pattern.format(reference_time=reference_time, index=index)
                    assert out.is_file(), (pipeline.name, step.name, out)


# --- problems: one kind at a time ----------------------------------------------------


def test_problem_line_format():
    p = Problem("pipelines/example.toml", "steps.convert", "retry.tries", 'must be an integer >= 1, got "three"')
    assert str(p) == 'pipelines/example.toml: [steps.convert] retry.tries: must be an integer >= 1, got "three"'
    assert str(Problem("a.toml", "", "", "invalid TOML")) == "a.toml: invalid TOML"
    assert str(Problem("a.toml", "pipeline", "", "missing")) == "a.toml: [pipeline] missing"


def test_the_brief_example_message(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\nretry = { tries = "three" }\n'))
    problem = find(problems_of(conf), "steps.convert", "retry.tries")
    assert str(problem) == (
        f'{tmp_path}/pipelines/p.toml: [steps.convert] retry.tries: must be an integer >= 1, got "three"'
    )


def test_file_names_are_shown_as_the_user_gave_them(tmp_path, monkeypatch):
    setup(tmp_path, pipeline_with('command = "x"\njobs = 0\n'))
    monkeypatch.chdir(tmp_path)
    problem = find(problems_of(Path("muppet.toml")), "steps.convert", "jobs")
    assert problem.file == os.path.join("pipelines", "p.toml")


def test_toml_syntax_error_names_the_line(tmp_path):
    conf = setup(tmp_path, "[pipeline]\nname = \"p\"\nowner = \n")
    (problem,) = problems_of(conf)
    assert problem.file.endswith("p.toml") and "invalid TOML" in problem.message and "line 3" in problem.message
    conf = write(tmp_path / "bad.toml", "[daemon\n")
    (problem,) = problems_of(conf)
    assert problem.file == str(conf) and "line 1" in problem.message


def test_unreadable_files(tmp_path):
    (problem,) = problems_of(tmp_path / "nothing.toml")
    assert problem.message == "no such file"
    (tmp_path / "latin1.toml").write_bytes(b'x = "\xe9"\n')
    (problem,) = problems_of(tmp_path / "latin1.toml")
    assert "UTF-8" in problem.message


def test_unknown_keys_everywhere(tmp_path):
    conf = setup(
        tmp_path,
        pipeline_with(
            """
            command = "x"
            comand = "y"
            retry = { tries = 2, intervall = 3 }
            resources = { queue = "q", colour = "red" }
            """,
            head='shedule = "x"',
        )
        + '[extra]\nx = 1\n',
        """
        foo = 1
        [api]
        port = 1
        [executors.local]
        type = "local"
        queue = "q"
        [executors.cluster]
        type = "slurm"
        nodes = 4
        [stakeholders.x]
        phone = "1"
        [database]
        url = "x"
        """,
    )
    problems = problems_of(conf)
    find(problems, "daemon", "foo", "unknown key")
    find(problems, "api", "port", "unknown key")
    find(problems, "executors.local", "queue", "unknown key")
    find(problems, "executors.cluster", "nodes", "unknown key")
    find(problems, "stakeholders.x", "phone", "unknown key")
    find(problems, "database", "", "unknown table")
    find(problems, "steps.convert", "comand", 'did you mean "command"')
    find(problems, "steps.convert", "retry.intervall", 'did you mean "interval"')
    find(problems, "steps.convert", "resources.colour", "unknown key")
    find(problems, "pipeline", "shedule", "unknown key")
    find(problems, "extra", "", "unknown table")
    daemon_file = str(tmp_path / "muppet.toml")
    assert {p.file for p in problems if p.table in ("", "api", "database")} == {daemon_file}


def test_pipeline_tables_in_the_daemon_file(tmp_path):
    conf = write(tmp_path / "muppet.toml", 'x = 1\n[daemon]\n[pipeline]\nname = "p"\n[steps.a]\ncommand = "x"\n')
    problems = problems_of(conf)
    find(problems, "", "x", "unknown key at the top level")
    find(problems, "pipeline", "", "belongs in a pipeline file")
    find(problems, "steps", "", "belongs in a pipeline file")


def test_a_pipeline_file_given_as_the_daemon_file(tmp_path):
    write(tmp_path / "p.toml", GOOD_PIPELINE)
    (problem,) = problems_of(tmp_path / "p.toml")
    assert "pipeline file" in problem.message


def test_missing_required_keys(tmp_path):
    conf = setup(
        tmp_path,
        "[pipeline]\n[steps.a]\nparents = []\n",
        '[executors.cluster]\nmax_jobs = 2\n',
    )
    problems = problems_of(conf)
    find(problems, "pipeline", "name", "missing required key")
    find(problems, "pipeline", "owner", "missing required key")
    find(problems, "steps.a", "command", "missing required key")
    find(problems, "executors.cluster", "type", "missing required key")


def test_missing_pipeline_table_and_steps(tmp_path):
    conf = setup(
        tmp_path, None, a='[steps.a]\ncommand = "x"\n', b='[stakeholders.o]\n[pipeline]\nname = "b"\nowner = "o"\n'
    )
    problems = problems_of(conf)
    assert find(problems, "pipeline", "", "missing required table").file.endswith("a.toml")
    assert find(problems, "steps", "", "at least one").file.endswith("b.toml")


@pytest.mark.parametrize(
    "line, key, words",
    [
        ('jobs = "4"', "jobs", ('an integer >= 1', 'got "4"')),
        ("jobs = 4.0", "jobs", ("an integer", "got 4.0")),
        ("jobs = true", "jobs", ("an integer", "got true")),
        ("jobs = 0", "jobs", (">= 1", "got 0")),
        ("jobs = 1000000", "jobs", ("<= 100000",)),
        ("concurrency = 0", "concurrency", (">= 1",)),
        ("concurrency = false", "concurrency", ("an integer",)),
        ('depends = "some"', "depends", ('"all", "each"', 'got "some"')),
        ("command = 5", "command", ("must be a string", "got 5")),
        ('command = "  "', "command", ("must not be empty",)),
        ('parents = "fetch"', "parents", ("list of strings",)),
        ("parents = [1]", "parents", ("list of non-empty strings", "got 1")),
        ('parents = ["fetch", "fetch"]', "parents", ('"fetch" more than once',)),
        ("env = 3", "env", ("must be a table",)),
        ("env = { N = 4 }", "env.N", ("must be a string", "got 4")),
        ('env = { MUPPET_JOB_INDEX = "1" }', "env.MUPPET_JOB_INDEX", ("set by MUPPET",)),
        ('env = { "1X" = "a" }', "env.1X", ("not a valid environment variable name",)),
        ("executor = 3", "executor", ("must be a string",)),
        ('outputs = "x.txt"', "outputs", ("list of strings",)),
        ("retry = 3", "retry", ("must be a table",)),
        ("retry = { tries = 0 }", "retry.tries", (">= 1", "got 0")),
        ("retry = { tries = 2.5 }", "retry.tries", ("an integer", "got 2.5")),
        ("retry = { interval = -1 }", "retry.interval", ("a number >= 0", "got -1")),
        ('retry = { interval = "5s" }', "retry.interval", ("a number >= 0", 'got "5s"')),
        ("retry = { interval = true }", "retry.interval", ("a number",)),
        ("retry = { interval = nan }", "retry.interval", ("a number",)),
        ("retry = { factor = 0.5 }", "retry.factor", ("a number >= 1", "got 0.5")),
        ("resources = { cpus = 0 }", "resources.cpus", (">= 1",)),
        ('resources = { cpus = "4" }', "resources.cpus", ("an integer",)),
        ("resources = { queue = 3 }", "resources.queue", ("must be a string",)),
        ("resources = { memory = 1.5 }", "resources.memory", ("a string or an integer",)),
        ('resources = { submit_options = "-x" }', "resources.submit_options", ("list of strings",)),
        ("resources = 1", "resources", ("must be a table",)),
        ("resources = { poll_interval = 1 }", "resources.poll_interval", ("unknown key",)),
        ("resources = { account = 1 }", "resources.account", ("must be a string",)),
    ],
)
def test_step_values(tmp_path, line, key, words):
    if line.startswith("command"):
        body = line + "\n"
    elif line.startswith("parents"):
        body = 'command = "x"\n' + line + "\n"
    else:
        body = 'command = "x"\nparents = ["fetch"]\n' + line + "\n"
    conf = setup(tmp_path, pipeline_with(body))
    problems = problems_of(conf)
    problem = find(problems, "steps.convert", key, *words)
    assert problem.file == str(tmp_path / "pipelines" / "p.toml")


@pytest.mark.parametrize(
    "line, key, words",
    [
        ("name = 3", "name", ("must be a string",)),
        ('name = "a b"', "name", ("may only contain",)),
        ('name = "../x"', "name", ("may only contain",)),
        ("owner = 1", "owner", ("must be a string",)),
        ('requires = "x"', "requires", ("list of strings",)),
        ("produces = [1]", "produces", ("list of non-empty strings",)),
        ('cron = "0 * * * *"', "cron", ("list of strings",)),
        ('cron = ["61 * * * *"]', "cron", ('"61 * * * *"', "not a valid cron expression")),
        ('cron = ["* * *"]', "cron", ("5 fields",)),
        ('cron = ["0 0 * * * 30"]', "cron", ("5 fields",)),
        ('cron = ["0 0 30 2 *"]', "cron", ("never fires",)),
        ('cron = ["@sometimes"]', "cron", ("aliases",)),
        ('timezone = "Mars/Olympus_Mons"', "timezone", ('unknown time zone "Mars/Olympus_Mons"',)),
        ('timezone = "../etc/passwd"', "timezone", ("unknown time zone",)),
        ("timezone = 1", "timezone", ("must be a string",)),
    ],
)
def test_pipeline_values(tmp_path, line, key, words):
    head = line if line.startswith("name") else 'name = "p"\n' + line
    text = pipeline_with('command = "x"\n').replace('name = "p"', head)
    if line.startswith("owner"):
        text = text.replace('owner = "ops"\n', "")
    conf = setup(tmp_path, text)
    find(problems_of(conf), "pipeline", key, *words)


def test_every_bad_cron_expression_is_reported(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\n', head='cron = ["bad", "0 * * * *", "0 25 * * *"]'))
    problems = [p for p in problems_of(conf) if p.key == "cron"]
    assert len(problems) == 2
    assert '"bad"' in problems[0].message and '"0 25 * * *"' in problems[1].message


def test_cron_aliases_and_time_zones_accepted(tmp_path):
    conf = setup(
        tmp_path, pipeline_with('command = "x"\n', head='cron = ["@hourly", "30 2 * * 1-5"]\ntimezone = "Europe/Oslo"')
    )
    pipeline = load_config(conf).pipelines["p"]
    # Aliases are stored as five fields, the one shape the cron task reads.
    assert pipeline.cron == ("0 * * * *", "30 2 * * 1-5") and pipeline.timezone == "Europe/Oslo"


@pytest.mark.parametrize(
    "section, table, key, words",
    [
        ('[daemon]\ndatabase = "mysql://x"', "daemon", "database", ('"sqlite:///..." or "postgresql://..."', '"mysql://x"')),
        ('[daemon]\ndatabase = "sqlite://x.db"', "daemon", "database", ("sqlite:///relative",)),
        ('[daemon]\ndatabase = "sqlite:///"', "daemon", "database", ("must name a database file",)),
        ('[daemon]\ndatabase = "sqlite:///:memory:"', "daemon", "database", ("must name a database file",)),
        ('[daemon]\ndatabase = "postgresql://h:port/db"', "daemon", "database", ("not a valid PostgreSQL URL",)),
        ('[daemon]\ndatabase = "postgres://h/db"', "daemon", "database", ("postgresql://",)),
        ("[daemon]\ndatabase = 5", "daemon", "database", ("must be a string",)),
        ("[daemon]\nstate_dir = 5", "daemon", "state_dir", ("must be a string",)),
        ('[daemon]\noutput_dir = ""', "daemon", "output_dir", ("must not be empty",)),
        ('[daemon]\npipelines = "*.toml"', "daemon", "pipelines", ("list of strings",)),
        ('[daemon]\nkeep_history = "30 days"', "daemon", "keep_history", ("ISO 8601 duration", "30 days")),
        ('[daemon]\nkeep_history = "P0D"', "daemon", "keep_history", ("longer than zero",)),
        ('[daemon]\nkeep_job_dirs = "-P7D"', "daemon", "keep_job_dirs", ("longer than zero",)),
        ('[daemon]\nkeep_history = "P3D"\nkeep_job_dirs = "P7D"', "daemon", "keep_job_dirs",
         ("not be longer than keep_history", '"P3D"', '"P7D"')),
        ("daemon = 3", "", "daemon", ("must be a table",)),
        ('[api]\nlisten = "8765"', "api", "listen", ("HOST:PORT",)),
        ('[api]\nlisten = "localhost:http"', "api", "listen", ("HOST:PORT",)),
        ('[api]\nlisten = "localhost:70000"', "api", "listen", ("HOST:PORT",)),
        ('[api]\nlisten = ":8765"', "api", "listen", ("HOST:PORT",)),
        ('[api]\nlisten = "::1:8765"', "api", "listen", ("brackets",)),
        (
            '[executors.x]\ntype = "kubernetes"', "executors.x", "type",
            ('"local", "gridengine", "slurm"', '"kubernetes"'),
        ),
        ('[executors.x]\ntype = "local"\nmax_jobs = 0', "executors.x", "max_jobs", (">= 1", "got 0")),
        ('[executors.x]\ntype = "slurm"\nmax_jobs = "8"', "executors.x", "max_jobs", ("an integer",)),
        ('[executors.x]\ntype = "slurm"\npoll_interval = 0', "executors.x", "poll_interval", ("a number > 0",)),
        ('[executors.x]\ntype = "slurm"\nsubmit_options = [1]', "executors.x", "submit_options", ("list of",)),
        ('[executors.x]\ntype = "gridengine"\nslots = "2"', "executors.x", "slots", ("an integer",)),
        ('[executors."a b"]\ntype = "local"', "executors.a b", "", ("may only contain",)),
        ('[executors.x]\ntype = "local"\nbash = "bash"', "executors.x", "bash", ("an absolute path", '"bash"')),
        ('[executors.x]\ntype = "local"\nbash = "/no/such/bash"', "executors.x", "bash",
         ("/no/such/bash is not an executable file here",)),
        ('[executors.x]\ntype = "local"\nbash = "/tmp"', "executors.x", "bash", ("/tmp is not an executable file",)),
        ('[executors.x]\ntype = "slurm"\nbash = "/bin/bash"', "executors.x", "bash", ("unknown key",)),
        ("[executors]\nx = 1", "executors", "x", ("must be a table",)),
        ("[stakeholders]\nx = 1", "stakeholders", "x", ("must be a table",)),
        ('[stakeholders.x]\nemail = "nobody"', "stakeholders.x", "email", ("not an e-mail address",)),
        ("[stakeholders.x]\nname = 1", "stakeholders.x", "name", ("must be a string",)),
    ],
)
def test_daemon_values(tmp_path, section, table, key, words):
    conf = write(tmp_path / "muppet.toml", section + "\n")
    problem = find(problems_of(conf), table, key, *words)
    assert problem.file == str(conf)


def test_history_is_kept_as_long_as_said(tmp_path):
    """[daemon] keep_history and keep_job_dirs: the defaults, and durations
    with calendar and clock parts (docs/configuration.md, "[daemon]")."""
    assert (load_config(write(tmp_path / "empty.toml", "")).daemon.keep_history,
            load_config(write(tmp_path / "empty.toml", "")).daemon.keep_job_dirs) == ("P30D", "P7D")
    conf = write(tmp_path / "muppet.toml", '[daemon]\nkeep_history = "P1M"\nkeep_job_dirs = "PT36H"\n')
    daemon = load_config(conf).daemon
    assert (daemon.keep_history, daemon.keep_job_dirs) == ("P1M", "PT36H")


def test_references_to_steps(tmp_path):
    conf = setup(
        tmp_path,
        pipeline_with(
            """
            command = "x"
            parents = ["fetchh", "convert"]
            conflicts = ["cleanup", "convert"]
            """
        ),
    )
    problems = problems_of(conf)
    find(problems, "steps.convert", "parents", 'unknown step "fetchh"', 'did you mean "fetch"')
    find(problems, "steps.convert", "parents", "cannot name itself")
    find(problems, "steps.convert", "conflicts", 'unknown step "cleanup"')
    find(problems, "steps.convert", "conflicts", "cannot name itself")


def test_cycles_are_named_in_order(tmp_path):
    conf = setup(
        tmp_path,
        """
        [stakeholders.o]
        [pipeline]
        name = "p"
        owner = "o"
        [steps.start]
        command = "x"
        [steps.a]
        parents = ["start", "c"]
        command = "x"
        [steps.b]
        parents = ["a"]
        command = "x"
        [steps.c]
        parents = ["b"]
        command = "x"
        [steps.d]
        parents = ["e"]
        command = "x"
        [steps.e]
        parents = ["d"]
        command = "x"
        """,
    )
    problems = problems_of(conf)
    find(problems, "steps.a", "parents", "cycle", "a -> b -> c -> a")
    find(problems, "steps.d", "parents", "cycle", "d -> e -> d")
    assert len(problems) == 2


def test_depends_each_needs_equal_job_counts(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\nparents = ["fetch"]\njobs = 3\ndepends = "each"\n'))
    find(problems_of(conf), "steps.convert", "depends", "equal job counts", "jobs = 3", '"fetch" has jobs = 4')


@pytest.mark.parametrize(
    "pattern, words",
    [
        ("/abs/x.txt", ("must be relative",)),
        ("../x.txt", ("'..'",)),
        ("a/../../x.txt", ("'..'",)),
        ("x_{member}.txt", ("{member}",)),
        ("x_{}.txt", ("positional",)),
        ("x_{0}.txt", ("{0}",)),
        ("x_{index:%Y}.txt", ("cannot be formatted",)),
        ("x_{reference_time.nope}.txt", ("cannot be formatted",)),
        ("x_{index.txt", ("bad format string",)),
        ("", ("list of non-empty strings",)),
        ("{reference_time:}/", ("must name a file",)),
    ],
)
def test_bad_outputs(tmp_path, pattern, words):
    conf = setup(tmp_path, pipeline_with(f'command = "x"\noutputs = ["{pattern}"]\n'))
    find(problems_of(conf), "steps.convert", "outputs", *words)


def test_outputs_of_many_jobs_need_the_index(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\njobs = 2\noutputs = ["a/{reference_time:%H}.txt"]\n'))
    find(problems_of(conf), "steps.convert", "outputs", "needs {index}")


def test_outputs_with_the_same_destination(tmp_path):
    other = GOOD_PIPELINE.replace('name = "example"', 'name = "other"')
    conf = setup(tmp_path, GOOD_PIPELINE, q=other)
    problem = find(problems_of(conf), "steps.convert", "outputs", "same destination", 'pipeline "example"')
    assert problem.file.endswith("q.toml")


def test_good_output_patterns(tmp_path):
    conf = setup(
        tmp_path,
        pipeline_with(
            'command = "x"\njobs = 2\n'
            'outputs = ["{reference_time:%Y/%m/%d}/f_{index:03d}.nc", "a/{reference_time.hour}_{index}", '
            '"b/{{literal}}_{index}"]\n'
        ),
    )
    assert len(load_config(conf).pipelines["p"].steps["convert"].outputs) == 3


def test_unknown_executor_and_owner(tmp_path):
    pipeline = pipeline_with('command = "x"\nexecutor = "slurmm"\n').replace('owner = "ops"', 'owner = "opz"')
    conf = setup(tmp_path, pipeline)
    problems = problems_of(conf)
    find(problems, "steps.convert", "executor", 'unknown executor "slurmm"', "defined: local")
    find(problems, "pipeline", "owner", 'unknown stakeholder "opz"', "known: ops")


def test_an_executor_with_a_bad_type_does_not_cascade(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\nexecutor = "x"\n'), '[executors.x]\ntype = "pbs"\n')
    (problem,) = problems_of(conf)
    assert problem.table == "executors.x" and problem.key == "type"


def test_duplicate_pipeline_names_across_files(tmp_path):
    conf = setup(tmp_path, None, a=GOOD_PIPELINE, b=GOOD_PIPELINE.replace("out/", "other/"))
    problem = find(problems_of(conf), "pipeline", "name", 'pipeline "example" is also defined in')
    assert problem.file.endswith("b.toml") and problem.message.endswith("a.toml")


def test_stakeholder_defined_twice_differently(tmp_path):
    conf = setup(tmp_path, GOOD_PIPELINE, '[stakeholders.ops]\nname = "Ops"\n')
    problem = find(problems_of(conf), "stakeholders.ops", "", "defined differently in")
    assert problem.file.endswith("p.toml") and str(tmp_path / "muppet.toml") in problem.message


def test_bad_names(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\n') + '[steps."a/b"]\ncommand = "x"\n')
    find(problems_of(conf), "steps.a/b", "", "may only contain")


def test_all_problems_at_once_in_file_order(tmp_path):
    conf = setup(
        tmp_path,
        pipeline_with('command = "x"\njobs = 0\nretry = { tries = "three", factor = 0 }\ndepends = "x"\n'),
        '[api]\nlisten = "nope"\n',
    )
    problems = problems_of(conf)
    assert [(p.table, p.key) for p in problems] == [
        ("api", "listen"),
        ("steps.convert", "depends"),
        ("steps.convert", "jobs"),
        ("steps.convert", "retry.tries"),
        ("steps.convert", "retry.factor"),
    ]


# --- validate_paths --------------------------------------------------------------------


def test_validate_paths_daemon_file_with_its_pipelines(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\njobs = 0\n'))
    problems = validate_paths([str(conf)])
    find(problems, "steps.convert", "jobs", ">= 1")
    # The same pipeline file named as well is reported once.
    assert validate_paths([str(conf), str(tmp_path / "pipelines" / "p.toml")]) == problems


def test_validate_paths_lone_pipeline_files(tmp_path):
    # The owner and the executor may live in the daemon file: not errors here.
    a = write(
        tmp_path / "a.toml",
        '[pipeline]\nname = "a"\nowner = "elsewhere"\n[steps.s]\ncommand = "x"\nexecutor = "cluster"\n',
    )
    assert validate_paths([str(a)]) == []
    # Everything inside the files is still checked, and names must differ.
    b = write(tmp_path / "b.toml", '[pipeline]\nname = "a"\nowner = "o"\n[steps.s]\ncommand = "x"\njobs = 0\n')
    problems = validate_paths([str(a), str(b)])
    assert {(p.file, p.table, p.key) for p in problems} == {
        (str(b), "steps.s", "jobs"),
        (str(b), "pipeline", "name"),
    }


def test_validate_paths_kinds_of_file(tmp_path):
    daemon = write(tmp_path / "anything.toml", '[api]\nlisten = "x"\n')
    syntax = write(tmp_path / "syntax.toml", "[pipeline\n")
    steps_only = write(tmp_path / "steps.toml", '[steps.a]\ncommand = "x"\n')
    problems = validate_paths([str(daemon), str(syntax), str(tmp_path / "gone.toml"), str(steps_only)])
    assert [(p.file, p.table, p.key) for p in problems] == [
        (str(daemon), "api", "listen"),
        (str(syntax), "", ""),
        (str(tmp_path / "gone.toml"), "", ""),
        (str(steps_only), "pipeline", ""),
    ]
    assert "line 1" in problems[1].message and problems[2].message == "no such file"
    assert validate_paths([]) == []


def test_every_bad_output_is_reported(tmp_path):
    conf = setup(tmp_path, pipeline_with('command = "x"\noutputs = ["/a", "ok.txt", "../b"]\n'))
    problems = [p for p in problems_of(conf) if p.key == "outputs"]
    assert len(problems) == 2
    assert '"/a"' in problems[0].message and '"../b"' in problems[1].message


# --- the index and the API's security ---------------------------------------------


INDEX_DAEMON = """
[stakeholders.ops]
name = "Operations"
[products.arome]
name = "AROME"
contact = "ops"
file_count = 2
operational = true
lifetime_hours = 72
projection = "lambert"
time_steps = 67
[products.arome-pp]
name = "AROME pp"
parents = ["arome"]
[formats.zarr]
name = "Zarr"
[backends.lustre-a]
name = "Lustre A"
url = "file:///lustre/a/"
[index]
expiry_interval = 30
delete_expired_files = true
"""


def test_index_declarations_load(tmp_path):
    conf = setup(tmp_path, daemon=INDEX_DAEMON)
    config = load_config(conf)
    arome = config.products["arome"]
    assert (arome.name, arome.contact, arome.file_count, arome.operational, arome.lifetime_hours) == (
        "AROME", "ops", 2, True, 72.0)
    assert arome.metadata == {"projection": "lambert", "time_steps": 67}
    assert config.products["arome-pp"].parents == ("arome",)
    assert set(config.formats) == {"netcdf", "grib", "zarr"}
    assert config.backends["lustre-a"].url == "file:///lustre/a"
    # step outputs go on an implicit backend that is the output directory
    assert config.index.outputs_backend == "local"
    assert config.backends["local"].local_root == config.daemon.output_dir
    assert config.index.expiry_interval == 30 and config.index.delete_expired_files


@pytest.mark.parametrize("daemon, table, key, words", [
    ('[products.x]\nname = "X"\ncontact = "nobody"\n', "products.x", "contact", ("unknown stakeholder",)),
    ('[products.x]\nname = "X"\nparents = ["y"]\n', "products.x", "parents", ("unknown product",)),
    ('[products.x]\nname = "X"\nfile_count = 0\n', "products.x", "file_count", (">= 1",)),
    ('[products.x]\nname = "X"\ncolour = "red"\n', "products.x", "colour", ("unknown key",)),
    ("[products.x]\nfile_count = 1\n", "products.x", "name", ("missing required key",)),
    ('[backends.b]\nname = "B"\nurl = "lustre/a"\n', "backends.b", "url", ("must be a URL",)),
    ('[backends.b]\nname = "B"\nurl = "file://relative"\n', "backends.b", "url", ("absolute path",)),
    ('[index]\noutputs_backend = "nope"\n', "index", "outputs_backend", ("unknown backend",)),
    ('[backends.b]\nname = "B"\nurl = "file:///elsewhere"\n[index]\noutputs_backend = "b"\n',
     "index", "outputs_backend", ("output_dir",)),
    ('[api]\nlisten = "0.0.0.0:8765"\n', "api", "listen", ("tokens_file", "other hosts")),
    ('[api]\ntokens_file = "missing.toml"\n', "api", "tokens_file", ("no such file",)),
    ('[api]\nopen_reads = "yes"\n', "api", "open_reads", ("true or false",)),
    ('[api]\nmax_message_bytes = 10\n', "api", "max_message_bytes", (">= 1024",)),
])
def test_index_and_api_problems_are_named(tmp_path, daemon, table, key, words):
    problems = problems_of(setup(tmp_path, daemon=EXAMPLE_PRODUCT + daemon))
    find(problems, table, key, *words)


def test_pipelines_must_name_declared_products(tmp_path):
    pipeline = GOOD_PIPELINE.replace('requires = []', 'requires = ["nope"]')
    find(problems_of(setup(tmp_path, pipeline)), "pipeline", "requires", "unknown product", '"nope"')


def test_a_step_product_must_be_produced(tmp_path):
    pipeline = GOOD_PIPELINE.replace('[steps.cleanup]\n', '[steps.cleanup]\nproduct = "other"\n')
    find(problems_of(setup(tmp_path, pipeline)), "steps.cleanup", "product", "not in the pipeline's produces")


def test_tokens_file(tmp_path):
    digest = "0123456789abcdef" * 4
    (tmp_path / "tokens.toml").write_text(
        f'[tokens.producer]\nrole = "write"\nsha256 = "{digest.upper()}"\n'
        '[tokens.bad]\nrole = "god"\nsha256 = "secret"\n'
    )
    conf = setup(tmp_path, daemon='[api]\ntokens_file = "tokens.toml"\nlisten = "0.0.0.0:8765"\n')
    problems = problems_of(conf)
    assert {p.file for p in problems} == {str(tmp_path / "tokens.toml")}
    find(problems, "tokens.bad", "role", "must be one of")
    find(problems, "tokens.bad", "sha256", "64 hexadecimal digits", "never the secret")
    (tmp_path / "tokens.toml").write_text(f'[tokens.producer]\nrole = "write"\nsha256 = "{digest}"\n')
    config = load_config(conf)
    assert config.api.tokens[digest].name == "producer" and config.api.host == "0.0.0.0"


def test_tls_needs_both_files(tmp_path):
    (tmp_path / "api.crt").write_text("x")
    problems = problems_of(setup(tmp_path, daemon='[api]\ntls_cert = "api.crt"\n'))
    find(problems, "api", "tls_key", "go together")


# --- alerts: [alerts], the stakeholders' webhook and notify, a product's expected_after (docs/alerts.md) ---


def test_alerts_keys_are_loaded(tmp_path):
    (tmp_path / "smtp.password").write_text("s3cret\n")
    conf = setup(tmp_path, GOOD_PIPELINE, """
        [alerts]
        smtp = "smtp.example.org:587"
        starttls = true
        username = "muppet"
        password_file = "smtp.password"
        from = "muppet@example.org"
        digest_seconds = 30
        default_to = ["desk"]
        remind_seconds = 0
        [stakeholders.desk]
        name = "Operations desk"
        email = "desk@example.org"
        webhook = "https://chat.example.org/hooks/abc"
        notify = ["job_failed", "database_down"]
        [stakeholders.pager]
        webhook = "https://events.pagerduty.com/v2/enqueue"
        routing_key = "R0UT1NGKEY"
        [products.example-product]
        name = "Example"
        contact = "desk"
        expected_after = "PT3H"
    """)
    config = load_config(conf)
    alerts = config.alerts
    assert (alerts.smtp, alerts.security, alerts.username, alerts.password, alerts.sender) == (
        "smtp.example.org:587", "starttls", "muppet", "s3cret", "muppet@example.org")
    assert alerts.password_file == str(tmp_path / "smtp.password")
    assert "s3cret" not in repr(alerts)
    assert (alerts.digest_seconds, alerts.default_to, alerts.remind_seconds) == (30, ("desk",), 0)
    desk = config.stakeholders["desk"]
    assert (desk.webhook, desk.notify, desk.routing_key) == (
        "https://chat.example.org/hooks/abc", ("job_failed", "database_down"), "")
    assert config.stakeholders["pager"].routing_key == "R0UT1NGKEY"
    assert config.stakeholders["ops"].notify is None  # all kinds
    assert config.products["example-product"].expected_after == "PT3H"


def test_alerts_defaults(tmp_path):
    config = load_config(setup(tmp_path, GOOD_PIPELINE))
    assert (config.alerts.smtp, config.alerts.digest_seconds, config.alerts.default_to) == ("", 60.0, ())
    assert config.products["example-product"].expected_after is None


@pytest.mark.parametrize(
    "section, table, key, words",
    [
        ('[alerts]\nsmtp = "mail.example.org"\nfrom = "m@x.org"', "alerts", "smtp", ("HOST:PORT",)),
        ('[alerts]\nsmtp = "h:25"\nfrom = "m@x.org"\nssl = true\nstarttls = true', "alerts", "ssl",
         ("not both",)),
        ('[alerts]\nsmtp = "h:25"', "alerts", "from", ("From: address",)),
        ('[alerts]\nsmtp = "h:25"\nfrom = "nobody"', "alerts", "from", ("not an e-mail address",)),
        ('[alerts]\nsmtp = "h:25"\nfrom = "m@x.org"\nusername = "u"', "alerts", "password_file", ("missing",)),
        ('[alerts]\nsmtp = "h:25"\nfrom = "m@x.org"\nusername = "u"\npassword_file = "nope"', "alerts",
         "password_file", ("cannot read",)),
        ('[alerts]\nstarttls = true', "alerts", "starttls", ("without smtp",)),
        ('[alerts]\ndigest_seconds = -1', "alerts", "digest_seconds", (">= 0",)),
        ('[alerts]\ndigest_seconds = "60"', "alerts", "digest_seconds", ("a number",)),
        ('[alerts]\ndefault_to = "desk"', "alerts", "default_to", ("list of strings",)),
        ('[alerts]\ndefault_to = ["nobody"]', "alerts", "default_to", ("unknown stakeholder",)),
        ('[alerts]\nsmpt = "h:25"', "alerts", "smpt", ('did you mean "smtp"',)),
        ('[stakeholders.x]\nwebhook = "ftp://x/y"', "stakeholders.x", "webhook", ("http:// or https://",)),
        ('[stakeholders.x]\nnotify = ["failure"]', "stakeholders.x", "notify", ('unknown kind "failure"',)),
        ('[stakeholders.x]\nnotify = "job_failed"', "stakeholders.x", "notify", ("list of strings",)),
        ('[stakeholders.x]\nrouting_key = "k"', "stakeholders.x", "routing_key", ("without webhook",)),
        ('[products.x]\nname = "X"\nexpected_after = "3 hours"', "products.x", "expected_after",
         ("ISO 8601 duration",)),
        ('[products.x]\nname = "X"\nexpected_after = "-PT3H"', "products.x", "expected_after", ("point back",)),
    ],
)
def test_bad_alerts_values(tmp_path, section, table, key, words):
    conf = write(tmp_path / "muppet.toml", section + "\n")
    problem = find(problems_of(conf), table, key, *words)
    assert problem.file == str(conf)


def test_muppet_validate_names_file_table_and_key_of_alerts_problems(tmp_path):
    conf = write(tmp_path / "muppet.toml", """
        [alerts]
        smtp = "localhost"
        default_to = ["desk"]
        [stakeholders.ops]
        notify = ["late", "lateness"]
    """)
    done = subprocess.run([sys.executable, "-m", "muppet.cli", "validate", str(conf)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f'{conf}: [stakeholders.ops] notify: unknown kind "lateness" (kinds: job_failed, run_failed, run_expired, '
        'late, product_late, database_down, executor_down, takeover)',
        f'{conf}: [alerts] smtp: must be HOST:PORT with a port 1-65535 (such as "smtp.example.org:587"), got '
        '"localhost"',
        f'{conf}: [alerts] default_to: unknown stakeholder "desk" (known: ops)',
    ]


def test_default_to_with_an_address_but_no_smtp_is_a_warning(tmp_path):
    conf = setup(tmp_path, GOOD_PIPELINE, '[alerts]\ndefault_to = ["ops"]\n')
    config = load_config(conf)
    assert any("[alerts] smtp: warning: not set: ops in default_to will get no mail" in w for w in config.warnings)
