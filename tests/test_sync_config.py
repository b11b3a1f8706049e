"""muppet-sync's seed and fetch configuration files: the examples in conf/
load, and every bad value is reported with file, table and key, all at once."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sync.config import (
    DEFAULT_LAYOUT,
    ConfigError,
    Listen,
    PeerPolicy,
    Select,
    load_fetch_config,
    load_seed_config,
)
from sync.engine_settings import EngineSettings

CONF = Path(__file__).resolve().parent.parent / "conf"

FETCH_OK = """
api = "ws://lustre-host:8765"
state_dir = "state"
listen = "127.0.0.1:6881-6889"
data_dir = "data"
backend = "thredds-1"
[[select]]
products = ["arome-pp"]
recent = 4
"""


def write(tmp_path: Path, text: str, name: str = "fetch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(load, path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return [str(p) for p in caught.value.problems]


def test_the_example_seed_configuration_loads():
    config = load_seed_config(CONF / "sync-seed.toml")
    assert config.api == "ws://lustre-host:8765"
    assert config.state_dir == Path("/var/lib/muppet-sync")
    assert config.listen == Listen("0.0.0.0", 6881, 6881)
    assert config.trackers == ()
    assert config.utp is False
    assert config.select == (Select(products=("arome-pp",), recent=12, formats=("netcdf",), backend="lustre-a"),)
    assert config.peers == PeerPolicy(allow=(ipaddress.ip_network("10.0.0.0/8"),))


def test_the_example_fetch_configuration_loads():
    config = load_fetch_config(CONF / "sync-fetch.toml")
    assert config.data_dir == Path("/srv/thredds/data")
    assert config.layout == "{product}/{reference_time:%Y/%m/%d}/{filename}"
    assert config.backend == "thredds-1"
    assert config.on_complete == ""
    assert config.select == (Select(products=("arome-pp",), recent=4),)
    assert config.peers.allow == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.peers.upload_rate == 0


@pytest.mark.parametrize(("name", "load", "listen"), [
    ("sync-seed.toml", load_seed_config, "0.0.0.0:8782"), ("sync-fetch.toml", load_fetch_config, "0.0.0.0:8781"),
])
def test_the_examples_metrics_key_is_off_until_uncommented(tmp_path, name, load, listen):
    text = (CONF / name).read_text()
    assert load(CONF / name).metrics_listen == ""
    assert "#[metrics]\n#listen" in text
    config = load(write(tmp_path, text.replace("#[metrics]\n#listen", "[metrics]\nlisten"), name))
    assert config.metrics_listen == listen


def test_defaults_relative_paths_and_port_range(tmp_path):
    config = load_fetch_config(write(tmp_path, FETCH_OK))
    assert config.state_dir == tmp_path / "state"
    assert config.data_dir == tmp_path / "data"
    assert config.layout == DEFAULT_LAYOUT
    assert config.listen == Listen("127.0.0.1", 6881, 6889)
    assert str(config.listen) == "127.0.0.1:6881-6889"
    assert config.peers == PeerPolicy()
    settings = EngineSettings.from_config(config)
    assert settings.listen == config.listen and settings.utp is False


def test_engine_settings_take_a_listen_string_checked_as_in_a_file(tmp_path):
    assert EngineSettings(tmp_path, listen="[::1]:7000-7001").listen == Listen("::1", 7000, 7001)
    assert EngineSettings(tmp_path).listen == Listen("0.0.0.0", 6881, 6881)
    with pytest.raises(ValueError, match="listen: ports must be 0-65535"):
        EngineSettings(tmp_path, listen="0.0.0.0:99999")


def test_ipv6_listen_and_rates(tmp_path):
    text = FETCH_OK.replace('"127.0.0.1:6881-6889"', '"[::]:7000"') + (
        "[peers]\nupload_rate = 5000000\ndownload_rate = 0\ndeny = [\"192.168.1.7\", \"fd00::/8\"]\n"
    )
    config = load_fetch_config(write(tmp_path, text))
    assert config.listen == Listen("::", 7000, 7000)
    assert str(config.listen) == "[::]:7000"
    assert config.peers.upload_rate == 5_000_000
    assert config.peers.deny == (ipaddress.ip_network("192.168.1.7/32"), ipaddress.ip_network("fd00::/8"))


def test_every_problem_is_reported_at_once_with_file_table_and_key(tmp_path):
    text = """
api = "http://lustre-host:8765"
listen = "0.0.0.0:99999"
trackers = ["ftp://x/announce"]
utp = "no"
data_dir = ""
layout = "/abs/{product}/{filename}"
on_complete = 3
colour = "blue"
[[select]]
products = []
recent = 0
formats = "netcdf"
[[select]]
products = ["a"]
recent = true
backend = 5
extra = 1
[peers]
allow = ["10.0.0.0/33", "lan"]
deny = "10.0.0.0/8"
upload_rate = -1
download_rate = 1.5
burst = 3
"""
    found = problems(load_fetch_config, write(tmp_path, text))
    path = str(tmp_path / "fetch.toml")
    expected = [
        "colour: unknown key",
        "api: must be the index's WebSocket URL",
        "state_dir: missing (where resume data is kept)",
        "listen: ports must be 0-65535",
        "trackers: \"ftp://x/announce\" is not a tracker URL",
        "utp: must be true or false, got \"no\"",
        "[[select]] #1 products: must list at least one",
        "[[select]] #1 recent: must be an integer >= 1, got 0",
        "[[select]] #1 formats: must be a list of strings",
        "[[select]] #2 extra: unknown key",
        "[[select]] #2 recent: must be an integer >= 1, got true",
        "[[select]] #2 backend: must be a string, got 5",
        "[peers] burst: unknown key",
        "[peers] allow: \"10.0.0.0/33\" is not a network; \"lan\" is not a network",
        "[peers] deny: must be a list of networks",
        "[peers] upload_rate: must be an integer >= 0, got -1",
        "[peers] download_rate: must be an integer >= 0, got 1.5",
        "data_dir: must not be empty",
        "layout: must be relative to data_dir",
        "backend: missing (this host's own service backend in the index)",
        "on_complete: must be a string, got 3",
    ]
    assert len(found) == len(expected), "\n".join(found)
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(f"{path}: {want}"), (line, want)


def test_the_brief_s_example_message(tmp_path):
    text = FETCH_OK + '[peers]\nallow = ["10.0.0.0/33"]\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_fetch_config(path)
    assert str(caught.value) == f'{path}: [peers] allow: "10.0.0.0/33" is not a network'


@pytest.mark.parametrize(
    "layout, message",
    [
        ("{product}/{nope}/{filename}", "unknown field {nope}"),
        ("{product.__class__}/{filename}", "unknown field {product.__class__}"),
        ("{product[0]}/{filename}", "unknown field {product[0]}"),
        ("{product!r}/{filename}", "conversions are not allowed"),
        ("{product:%Y}/{filename}", "cannot be formatted"),
        ("{reference_time:{product}}/{filename}", "nested fields are not allowed"),
        ("{product}/../{filename}", "has a '..' part"),
        ("{product}//{filename}", "has an empty path part"),
        ("{product}/{reference_time:%Y}", "must contain {filename}"),
        ("{product}/{filename", "is not a valid template"),
        ("{}/{filename}", "needs a field name"),
    ],
)
def test_layout_checked_at_load(tmp_path, layout, message):
    # a TOML literal string; top-level keys go before the first table header
    text = FETCH_OK.replace('backend = "thredds-1"\n', f"backend = \"thredds-1\"\nlayout = '{layout}'\n")
    found = problems(load_fetch_config, write(tmp_path, text))
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'fetch.toml'}: layout: ")
    assert message in found[0]


def test_layout_with_every_field_and_a_strftime_spec(tmp_path):
    layout = "{backend}/{format}/{product}/v{version}/{reference_time:%Y%m%dT%H%MZ}/{filename}"
    text = FETCH_OK.replace('backend = "thredds-1"\n', f'backend = "thredds-1"\nlayout = "{layout}"\n')
    assert load_fetch_config(write(tmp_path, text)).layout == layout


@pytest.mark.parametrize(
    "listen, message",
    [
        ("6881", "must be HOST:PORT or HOST:FIRST-LAST"),
        ("0.0.0.0:", "must be HOST:PORT or HOST:FIRST-LAST"),
        ("0.0.0.0:6889-6881", "a port range goes from a lower to a higher port"),
        ("0.0.0.0:0-10", "a port range goes from a lower to a higher port"),
        ("::1:6881", "an IPv6 address goes in brackets"),
        ("[nope]:6881", "is not an IPv6 address"),
        ("eth 0:6881", "neither an IP address nor an interface name"),
    ],
)
def test_bad_listen(tmp_path, listen, message):
    text = FETCH_OK.replace('"127.0.0.1:6881-6889"', f'"{listen}"')
    found = problems(load_fetch_config, write(tmp_path, text))
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'fetch.toml'}: listen: "), found
    assert message in found[0]


@pytest.mark.parametrize(("load", "name"), [(load_seed_config, "seed.toml"), (load_fetch_config, "fetch.toml")])
def test_metrics_listen_in_both_files(tmp_path, load, name):
    text = FETCH_OK if name == "fetch.toml" else FETCH_OK.replace('data_dir = "data"\nbackend = "thredds-1"\n', "")
    assert load(write(tmp_path, text, name)).metrics_listen == ""  # absent: none
    for listen in ("0.0.0.0:8781", "[::]:8781", "metrics.example:9000", "127.0.0.1:0", ""):
        config = load(write(tmp_path, text + f'[metrics]\nlisten = "{listen}"\n', name))
        assert config.metrics_listen == listen


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[metrics]\nlisten = "8781"', '[metrics] listen: must be HOST:PORT (such as "0.0.0.0:8781" or '
                                        '"[::]:8781"), or "" for none, got "8781"'),
        ('[metrics]\nlisten = "0.0.0.0:99999"', "[metrics] listen: must be HOST:PORT"),
        ('[metrics]\nlisten = "::1:8781"', '[metrics] listen: an IPv6 address goes in brackets ("[::]:8781")'),
        ('[metrics]\nlisten = "[nope]:8781"', "[metrics] listen: 'nope' in brackets is not an IPv6 address"),
        ('[metrics]\nlisten = 8781', "[metrics] listen: must be a string, got 8781"),
        ('[metrics]\nport = 8781', "[metrics] port: unknown key (expected: listen)"),
        ('metrics = "0.0.0.0:8781"', 'metrics: must be a table, got "0.0.0.0:8781"'),
    ],
)
def test_bad_metrics(tmp_path, table, message):
    text = FETCH_OK.replace("[[select]]", table + "\n[[select]]")
    found = problems(load_fetch_config, write(tmp_path, text))
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'fetch.toml'}: {message}"), found


def test_seed_file_refuses_fetch_keys_and_needs_select(tmp_path):
    text = 'api = "ws://h:1"\nstate_dir = "s"\ndata_dir = "d"\n'
    found = problems(load_seed_config, write(tmp_path, text, "seed.toml"))
    path = tmp_path / "seed.toml"
    assert found[0].startswith(f"{path}: data_dir: unknown key")
    assert found[1].startswith(f"{path}: [[select]]: missing")
    assert len(found) == 2


def test_unreadable_and_invalid_files(tmp_path):
    missing = tmp_path / "nope.toml"
    assert problems(load_seed_config, missing) == [f"{missing}: no such file"]
    bad = write(tmp_path, "api = \n", "bad.toml")
    (found,) = problems(load_seed_config, bad)
    assert found.startswith(f"{bad}: invalid TOML: ")
    assert problems(load_seed_config, tmp_path) == [f"{tmp_path}: is a directory, not a TOML file"]


def test_typo_gets_a_suggestion(tmp_path):
    text = FETCH_OK.replace("data_dir", "datadir")
    found = problems(load_fetch_config, write(tmp_path, text))
    assert any('datadir: unknown key; did you mean "data_dir"?' in line for line in found), found


def test_advertise_is_checked_and_worked_out():
    from sync.follow import advertised_peer, parse_peer

    config = parse_fetch_config_text('advertise = "10.0.0.5:7000"\n' + FETCH_OK)
    assert config.advertise == "10.0.0.5:7000"
    with pytest.raises(ConfigError, match="advertise: must be HOST or HOST:PORT"):
        parse_fetch_config_text('advertise = "10.0.0.5:port"\n' + FETCH_OK)
    # given: kept, its port defaulting to the one listened on
    assert advertised_peer("10.0.0.5:7000", "0.0.0.0", 6881, "ws://x:1") == "10.0.0.5:7000"
    assert advertised_peer("thredds-1.example", "0.0.0.0", 6881, "ws://x:1") == "thredds-1.example:6881"
    # not given: a specific listen address, else the interface towards the index
    assert advertised_peer(None, "10.1.2.3", 6881, "ws://x:1") == "10.1.2.3:6881"
    assert advertised_peer(None, "0.0.0.0", 6881, "ws://127.0.0.1:8765") == "127.0.0.1:6881"
    assert parse_peer("[::1]:6881") == ("::1", 6881)
    assert parse_peer("nonsense") is None


def parse_fetch_config_text(text: str):
    import tomllib

    from sync.config import parse_fetch_config

    return parse_fetch_config(tomllib.loads(text), "fetch.toml")
