"""The torrents muppet-sync makes: plain BitTorrent v1 that Debian's aria2 and
Transmission read with the same info-hash, stable for the same file."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import libtorrent as lt
import pytest
from services import service_missing

from sync.errors import TorrentError
from sync.torrent import info_hash_hex, make_torrent, torrent_info


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "arome_pp_20260304T06Z.nc"
    path.write_bytes(os.urandom(1_000_003))
    return path


def test_v1_only_with_the_basename_and_correct_piece_hashes(data_file):
    torrent = make_torrent(data_file)
    meta = lt.bdecode(torrent)
    info = meta[b"info"]
    assert info[b"name"] == data_file.name.encode()
    assert info[b"length"] == 1_000_003
    assert b"meta version" not in info and b"file tree" not in info  # no v2 parts
    assert b"piece layers" not in meta and b"creation date" not in meta
    # the info-hash and piece hashes, computed without libtorrent
    assert info_hash_hex(torrent) == hashlib.sha1(lt.bencode(info)).hexdigest()
    size = info[b"piece length"]
    data = data_file.read_bytes()
    pieces = b"".join(hashlib.sha1(data[i : i + size]).digest() for i in range(0, len(data), size))
    assert info[b"pieces"] == pieces


def test_stable_info_hash_and_bytes(data_file, tmp_path):
    first = make_torrent(data_file)
    assert make_torrent(data_file) == first
    # where the file lives does not matter, only its name and bytes
    elsewhere = tmp_path / "other" / data_file.name
    elsewhere.parent.mkdir()
    shutil.copy(data_file, elsewhere)
    assert make_torrent(elsewhere) == first
    # trackers are outside the info dict
    with_trackers = make_torrent(data_file, ["http://a:6969/announce", "http://b:6969/announce"])
    assert info_hash_hex(with_trackers) == info_hash_hex(first)
    meta = lt.bdecode(with_trackers)
    assert meta[b"announce"] == b"http://a:6969/announce"
    assert meta[b"announce-list"] == [[b"http://a:6969/announce"], [b"http://b:6969/announce"]]
    # another name is another torrent
    renamed = tmp_path / "renamed.nc"
    shutil.copy(data_file, renamed)
    assert info_hash_hex(make_torrent(renamed)) != info_hash_hex(first)


def test_piece_size_chosen_or_given(data_file):
    chosen = lt.bdecode(make_torrent(data_file))[b"info"][b"piece length"]
    given = make_torrent(data_file, piece_size=65536)
    info = lt.bdecode(given)[b"info"]
    assert chosen != 65536 and info[b"piece length"] == 65536
    assert torrent_info(given).num_pieces() == 16  # 1,000,003 bytes in 64 KiB pieces
    for wrong in (8192, 24576):
        with pytest.raises(TorrentError, match=f"piece size {wrong}: not a power of two of at least 16 KiB"):
            make_torrent(data_file, piece_size=wrong)


def test_refuses_what_is_not_a_file(tmp_path):
    with pytest.raises(TorrentError, match="not a regular file"):
        make_torrent(tmp_path)
    with pytest.raises(TorrentError, match="not a regular file"):
        make_torrent(tmp_path / "missing")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(TorrentError, match="empty file"):
        make_torrent(tmp_path / "empty")
    with pytest.raises(TorrentError, match="not a valid torrent"):
        info_hash_hex(b"d4:spam")
    assert torrent_info(make_torrent(__file__)).name() == "test_sync_torrent.py"


def test_aria2c_reads_it_with_the_same_info_hash(data_file, tmp_path):
    aria2c = shutil.which("aria2c")
    if aria2c is None:
        service_missing("aria2c is not installed (apt-get install aria2)")
    torrent = make_torrent(data_file, ["http://127.0.0.1:6969/announce"])
    (tmp_path / "f.torrent").write_bytes(torrent)
    shown = subprocess.run([aria2c, "-S", str(tmp_path / "f.torrent")], capture_output=True, text=True, check=True)
    assert re.search(rf"^Info Hash: {info_hash_hex(torrent)}$", shown.stdout, re.M), shown.stdout
    assert re.search(rf"^Name: {re.escape(data_file.name)}$", shown.stdout, re.M)


def test_transmission_reads_it_with_the_same_info_hash(data_file, tmp_path):
    show = shutil.which("transmission-show")
    if show is None:
        service_missing("transmission-show is not installed (apt-get install transmission-cli)")
    torrent = make_torrent(data_file)
    (tmp_path / "f.torrent").write_bytes(torrent)
    shown = subprocess.run([show, str(tmp_path / "f.torrent")], capture_output=True, text=True, check=True)
    assert re.search(rf"^\s*Hash: {info_hash_hex(torrent)}$", shown.stdout, re.M), shown.stdout


def test_torrent_file_command(data_file, tmp_path):
    out = tmp_path / "out.torrent"
    result = subprocess.run(
        [sys.executable, "-m", "sync.cli", "torrent-file", str(data_file), "--output", str(out),
         "--tracker", "http://t:1/announce"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == info_hash_hex(out.read_bytes()) == info_hash_hex(make_torrent(data_file))
    assert lt.bdecode(out.read_bytes())[b"announce"] == b"http://t:1/announce"
    (tmp_path / "empty").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "sync.cli", "torrent-file", str(tmp_path / "empty"), "-o", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1 and "empty file" in result.stderr
