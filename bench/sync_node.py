"""The per-host helpers of bench/sync.py, each run inside that host's network
namespace.

``sniff``
    the moment the first BitTorrent payload reaches this host's interface
    (a raw packet socket; see :func:`sniff`): the bench's "first byte".
``command``
    ``muppet-sync ARGS`` in this process, with bench-only libtorrent settings
    patched in (``--setting NAME=VALUE``, ``--super-seed``, ``--log-alerts``):
    experiments on the real commands without changing sync/engine.py.
``seeder`` and ``consumer``
    the engine driver, for when ``muppet-sync seed``/``fetch`` are missing:
    they drive the real engine (sync/engine.py) through the real index, the
    way those commands do (docs/index.md, conf/sync-*.toml). The seeder
    follows the index's events; for each new file of the product on the origin
    backend it makes the torrent (sync.torrent.make_torrent), seeds it
    (Engine.seed) and stores info-hash, torrent and its own address in the
    index (files.set_torrent). A consumer follows the events; for each file of
    the product on the origin backend that has a torrent it fetches it from
    the file's peer (and the other consumers given by --peers) with
    Engine.fetch, checks and places it under ``DATA_DIR/PRODUCT/NAME``
    (sync.place.verify_and_place), registers its copy on its own backend, and
    keeps seeding until stopped.

``seeder``, ``consumer`` and ``sniff`` print one JSON object a line on stdout
with wall-clock times (``time.time()``: every namespace shares the host's
clock, so the figures of different hosts can be subtracted), ``{"what":
"ready"}`` first; they stop on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import libtorrent as lt  # noqa: E402

from muppet.api.client import connect  # noqa: E402
from sync.engine import open_engine  # noqa: E402
from sync.engine_settings import EngineSettings  # noqa: E402
from sync.place import verify_and_place  # noqa: E402
from sync.torrent import make_torrent  # noqa: E402

#: how often a consumer looks at its download's progress for the first byte
FIRST_BYTE_POLL = 0.005


def say(what: str, **fields) -> None:
    print(json.dumps({"what": what, "t": time.time(), **fields}), flush=True)


def file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def parse_peer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def stop_on_signal_or_eof(cancel_scope: trio.CancelScope) -> None:
    """Cancel ``cancel_scope`` on SIGTERM/SIGINT or when stdin closes."""

    async def eof() -> None:
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(eof)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        cancel_scope.cancel()


async def seeder(args) -> None:
    settings = EngineSettings(state_dir=args.state, listen=args.listen, utp=False)
    token = os.environ.get("MUPPET_TOKEN")
    async with open_engine(settings) as engine, connect(args.api, token=token) as client:
        events = await client.subscribe(kinds=["file"], products=[args.product])
        say("ready", port=engine.listen_port)
        try:
            async with trio.open_nursery() as nursery:
                if args.trace:
                    nursery.start_soon(trace, engine)
                await seed_files(args, engine, client, events)
        finally:
            await report_on_stop(engine)


async def seed_files(args, engine, client, events) -> None:
    async for event in events:
        seen = time.time()
        item = event["data"]
        if item["backend"] != args.origin or item.get("info_hash") or item.get("deleted"):
            continue
        path = file_path(item["url"])
        started = time.time()
        torrent = await trio.to_thread.run_sync(make_torrent, path, (), args.piece_size)
        made = time.time()
        ih = await engine.seed(path, torrent, verify=args.verify)
        if args.super_seed:
            # bench-only: the engine has no setting for it (yet)
            engine._torrents[ih].handle.set_flags(lt.torrent_flags.super_seeding)
        seeding = time.time()
        await client.call("files.set_torrent", {
            "file_id": item["id"], "info_hash": ih,
            "torrent": base64.b64encode(torrent).decode(), "peer": args.advertise,
        })
        say("seeding", file_id=item["id"], event_at=event["at"], seen=seen, torrent_start=started,
            torrent_made=made, seeding=seeding, published=time.time(), info_hash=ih,
            size=path.stat().st_size)


async def consumer(args) -> None:
    settings = EngineSettings(state_dir=args.state, listen=args.listen, utp=False)
    token = os.environ.get("MUPPET_TOKEN")
    others = [parse_peer(p) for p in args.peers]
    async with open_engine(settings) as engine, connect(args.api, token=token) as client:
        events = await client.subscribe(kinds=["file"], products=[args.product])
        say("ready", port=engine.listen_port)
        try:
            async with trio.open_nursery() as nursery:
                if args.trace:
                    nursery.start_soon(trace, engine)
                async for event in events:
                    item = event["data"]
                    if item["backend"] != args.origin or not item.get("info_hash") or item.get("deleted"):
                        continue
                    nursery.start_soon(consume_one, args, engine, client, item, event, others, time.time())
        finally:
            await report_on_stop(engine)


async def consume_one(args, engine, client, item, event, others, seen) -> None:
    full = await client.call("files.get", {"file_id": item["id"], "torrent": True})
    torrent = base64.b64decode(full["torrent"])
    ih = full["info_hash"]
    peers = ([parse_peer(full["peer"])] if full.get("peer") else []) + others
    first_byte: list[float] = []

    async def watch_first_byte() -> None:
        while True:
            for status in await engine.status():
                if status.info_hash == ih and status.total_download > 0:
                    first_byte.append(time.time())
                    return
            await trio.sleep(FIRST_BYTE_POLL)

    fetch_start = time.time()
    async with trio.open_nursery() as watch:
        watch.start_soon(watch_first_byte)
        downloaded = await engine.fetch(torrent, Path(args.state) / "downloads", peers)
        fetched = time.time()
        watch.cancel_scope.cancel()
    relative = f"{args.product}/{item['name']}"
    placed_path = await trio.to_thread.run_sync(verify_and_place, downloaded, args.data_dir, relative, full["hash"])
    placed = time.time()
    statuses = {s.info_hash: s for s in await engine.status()}
    status = statuses.get(ih)
    say("placed", file_id=item["id"], event_at=event["at"], seen=seen, fetch_start=fetch_start,
        first_byte=first_byte[0] if first_byte else None, fetched=fetched, placed=placed,
        path=str(placed_path), downloaded_bytes=status.total_download if status else None,
        uploaded_bytes=status.total_upload if status else None)
    # the copy, on this host's own backend, as fetch registers it
    await client.call("files.register", {"files": [{
        "product": full["product"], "reference_time": full["reference_time"], "version": full["version"],
        "backend": args.backend, "format": full["format"], "url": placed_path.as_uri(),
        "size": full["size"], "hash": full["hash"], "data_id": full["data_id"],
        "info_hash": ih, "peer": args.advertise,
    }]})
    say("registered", file_id=item["id"])


async def report_on_stop(engine) -> None:
    """On stop: what each torrent moved (the seeder's share of the upload)."""
    with trio.CancelScope(shield=True):
        say("stopped", torrents=[
            {"info_hash": s.info_hash, "state": s.state, "downloaded_bytes": s.total_download,
             "uploaded_bytes": s.total_upload}
            for s in await engine.status()
        ])


async def trace(engine) -> None:
    """--trace: once a second, each connection's rates and states on stderr."""
    log = logging.getLogger("bench.trace")
    while True:
        await trio.sleep(1.0)
        for ih, torrent in list(engine._torrents.items()):
            handle = torrent.handle
            if handle is None or not handle.is_valid():
                continue
            st = handle.status()
            peers = handle.get_peer_info()
            cpu = os.times()
            # the pieces some peer has (a seeder's: the pieces it has put
            # into the swarm), beside the bytes it sent: the difference is
            # what it sent twice
            have = [any(column) for column in zip(*(p.pieces for p in peers), strict=True)] if peers else []
            piece = st.torrent_file.piece_length() if st.torrent_file else 0
            log.info("%s %.0f%% down %.1f up %.1f MB/s cpu %.1f s sent %.1f MB, peers hold %.1f MB | %s",
                     ih[:8], st.progress * 100,
                     st.download_payload_rate / 1e6, st.upload_payload_rate / 1e6, cpu.user + cpu.system,
                     st.total_payload_upload / 1e6, sum(have) * piece / 1e6,
                     "; ".join(
                         f"{p.ip[0]} d{p.payload_down_speed / 1e6:.1f} u{p.payload_up_speed / 1e6:.1f}"
                         f"{' C' if p.flags & p.choked else ''}{' c' if p.flags & p.remote_choked else ''}"
                         f"{' I' if p.flags & p.interesting else ''}{' i' if p.flags & p.remote_interested else ''}"
                         f" q{p.download_queue_length}/{p.upload_queue_length} rtt{p.rtt}"
                         for p in peers))


async def main_async(args) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal_or_eof, nursery.cancel_scope)
        await (seeder if args.role == "seeder" else consumer)(args)
        nursery.cancel_scope.cancel()


def command(argv: list[str]) -> None:
    """``sync_node.py command [--setting N=V]... [--super-seed] [--piece-size B] -- ARGS``:
    ``muppet-sync ARGS`` in this process, with bench-only libtorrent settings
    on top of the engine's (experiments on the real commands)."""
    parser = argparse.ArgumentParser(prog="sync_node.py command")
    parser.add_argument("--setting", action="append", default=[])
    parser.add_argument("--super-seed", action="store_true")
    parser.add_argument("--piece-size", type=int, default=0)
    parser.add_argument("--log-alerts", action="store_true")
    parser.add_argument("--log-pieces", action="store_true")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.setting:
        patch_settings(args.setting)
    if args.log_alerts:
        patch_alert_log()
    if args.log_pieces:
        patch_piece_log()
    if args.piece_size:
        import sync.seed

        make = sync.seed.make_torrent
        sync.seed.make_torrent = lambda path, trackers=(): make(path, trackers, args.piece_size)
    if args.super_seed:
        import sync.engine

        seed = sync.engine.Engine.seed

        async def super_seed(self, *a, **kw):
            ih = await seed(self, *a, **kw)
            self._torrents[ih].handle.set_flags(lt.torrent_flags.super_seeding)
            return ih

        sync.engine.Engine.seed = super_seed
    from sync.cli import main as sync_main

    sync_main(rest, prog_name="muppet-sync")


def sniff(argv: list[str]) -> None:
    """``sync_node.py sniff [--iface eth0] [--port 6881] [--min-bytes 1000]``:
    the moment the first BitTorrent payload reaches this host's interface.

    Opens a raw packet socket on the interface (root, in the host's namespace),
    says ``ready``, then watches incoming IPv4 TCP segments: the first one from
    a connection to or from a peer's listening port (every host here listens
    on ``--port``: the seeder is dialled there, and a consumer that another
    one dialled gets its first piece on a connection to its own port)
    carrying at least ``--min-bytes`` of TCP payload is
    a piece's data (BitTorrent's handshakes, bitfields and PEX messages are far
    smaller; the payload itself is encrypted, so its size is what tells). Says
    ``first_byte`` with its time and source, and exits. Stops when stdin closes.
    """
    import select
    import socket
    import struct

    parser = argparse.ArgumentParser(prog="sync_node.py sniff")
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--port", type=int, default=6881)
    parser.add_argument("--min-bytes", type=int, default=1000)
    args = parser.parse_args(argv)
    eth_p_ip = 0x0800
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_ip))
    sock.bind((args.iface, eth_p_ip))
    say("ready")
    while True:
        readable, _, _ = select.select([sock, sys.stdin], [], [])
        if sys.stdin in readable and not sys.stdin.readline():
            return
        if sock not in readable:
            continue
        frame, address = sock.recvfrom(65535)
        now = time.time()
        if address[2] == socket.PACKET_OUTGOING:
            continue
        ip = frame[14:]
        if len(ip) < 20 or ip[9] != socket.IPPROTO_TCP:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack_from("!HH", tcp, 0)
        payload = total - ihl - (tcp[12] >> 4) * 4
        if args.port in (sport, dport) and payload >= args.min_bytes:
            say("first_byte", source=socket.inet_ntoa(ip[12:16]), bytes=payload, at=now)
            return


def main() -> None:
    if sys.argv[1:2] == ["command"]:
        return command(sys.argv[2:])
    if sys.argv[1:2] == ["sniff"]:
        return sniff(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["seeder", "consumer"])
    parser.add_argument("--api", required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT the engine listens on")
    parser.add_argument("--advertise", required=True, help="HOST:PORT other peers reach this host at")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--product", required=True)
    parser.add_argument("--origin", required=True, help="the backend the producer registers files on")
    parser.add_argument("--backend", help="consumer: this host's own backend")
    parser.add_argument("--data-dir", type=Path, help="consumer: where placed files go")
    parser.add_argument("--peers", nargs="*", default=[], help="consumer: other peers to dial, HOST:PORT")
    parser.add_argument("--super-seed", action="store_true", help="seeder: libtorrent super-seeding")
    parser.add_argument("--piece-size", type=int, default=0,
                        help="seeder: the torrent's piece size in bytes (default: libtorrent's choice)")
    parser.add_argument("--verify", action="store_true", help="seeder: check the file up front (no seed mode)")
    parser.add_argument("--log-alerts", action="store_true", help="every libtorrent alert on stderr")
    parser.add_argument("--log-pieces", action="store_true",
                        help="each block sent and each piece completed on stderr (see patch_piece_log)")
    parser.add_argument("--trace", action="store_true", help="every second, each connection's rates on stderr")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="experiment: a libtorrent setting on top of the engine's (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.setting:
        patch_settings(args.setting)
    if args.log_alerts:
        patch_alert_log()
    if args.log_pieces:
        patch_piece_log()
    trio.run(main_async, args)


def add_alert_categories(categories: int) -> None:
    """Bench-only: libtorrent posts these alert categories too (the engine
    reads its mask from sync.engine_settings.session_settings, through
    sync.engine's module global)."""
    import sync.engine

    original = sync.engine.session_settings

    def with_categories(settings):
        pack = original(settings)
        return {**pack, "alert_mask": int(pack["alert_mask"]) | int(categories)}

    sync.engine.session_settings = with_categories


def patch_alert_log() -> None:
    """Bench-only: every libtorrent alert on stderr, peer-level ones included,
    until the engine's first finished piece (to see where the time to the
    first byte goes without flooding the log later)."""
    import sync.engine
    from sync.alerts import ALERT_MASK

    add_alert_categories(lt.alert_category.all)
    original = sync.engine.Engine._on_alert
    log = logging.getLogger("bench.alert")

    def on_alert(self, alert):
        if not getattr(self, "_bench_quiet", False):
            log.info("%s: %s", alert.what(), alert.message())
            if isinstance(alert, lt.piece_finished_alert):
                self._bench_quiet = True
                self._ses.apply_settings({"alert_mask": int(ALERT_MASK)})
        return original(self, alert)

    sync.engine.Engine._on_alert = on_alert


#: the prefix of patch_piece_log's lines, which bench/sync.py reads back
PIECE_LOG = "PIECE-LOG"


def patch_piece_log() -> None:
    """Bench-only: one line on stderr for each block this host sends
    (libtorrent's block_uploaded_alert: to whom, which piece) and each piece
    it completes (piece_finished_alert), with wall-clock times:
    ``PIECE-LOG {"t": ..., "sent": PIECE, "to": IP}`` and ``PIECE-LOG {"t":
    ..., "done": PIECE}``; and each peer it snubs (no block from it within
    libtorrent's request timeout: it then asks that peer for the pieces the
    swarm has most of, and re-requests the late blocks elsewhere):
    ``PIECE-LOG {"t": ..., "snubbed": IP}``; and each block request that
    timed out (block_timeout_alert: asked again of another peer):
    ``PIECE-LOG {"t": ..., "timeout": PIECE, "from": IP}``. bench/sync.py --log-pieces reads
    them to say why the seeder sent a piece more than once."""
    import sync.engine

    add_alert_categories(lt.alert_category.upload | lt.alert_category.peer)
    original = sync.engine.Engine._on_alert

    def on_alert(self, alert):
        if isinstance(alert, lt.peer_snubbed_alert):
            print(PIECE_LOG, json.dumps({"t": time.time(), "snubbed": alert.ip[0]}), file=sys.stderr, flush=False)
        elif isinstance(alert, lt.block_timeout_alert):
            print(PIECE_LOG, json.dumps({"t": time.time(), "timeout": alert.piece_index, "from": alert.ip[0]}),
                  file=sys.stderr, flush=False)
        elif isinstance(alert, lt.block_uploaded_alert):
            print(PIECE_LOG, json.dumps({"t": time.time(), "sent": alert.piece_index, "to": alert.ip[0]}),
                  file=sys.stderr, flush=False)
        elif isinstance(alert, lt.piece_finished_alert):
            print(PIECE_LOG, json.dumps({"t": time.time(), "done": alert.piece_index}), file=sys.stderr,
                  flush=False)
        return original(self, alert)

    sync.engine.Engine._on_alert = on_alert


def patch_settings(pairs: list[str]) -> None:
    """Bench-only: add libtorrent settings to what sync.engine.session_settings
    gives (the engine reads it through its module global)."""
    import sync.engine

    extra = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        default = lt.default_settings().get(name)
        if default is None:
            raise SystemExit(f"--setting {pair}: libtorrent has no setting {name!r}")
        extra[name] = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
    original = sync.engine.session_settings
    sync.engine.session_settings = lambda settings: {**original(settings), **extra}


if __name__ == "__main__":
    main()
