"""The load generators and the plain echo server of bench/index.py, each run
as its own process (the 2-core box is shared by them and the daemon).

    python bench/index_client.py clients SPEC_JSON   # prints one JSON result line
    python bench/index_client.py echo-server PORT    # serves until killed

``clients``: SPEC_JSON is a file with ``url``, ``clients``, ``seconds``,
``batch``, ``mix`` ("query", "echo", "plain" or "bulk"), ``start_at`` (wall clock:
every process connects first, then all start together), ``products``
({slug: latest complete reference time}), ``instances`` ([[id, slug], ...]),
``files_share`` (the share of files.list calls in the query mix), ``fields``
(files.list's ``fields``, for the compact answer, or null for whole files), ``echo``
(the ~200-byte string of daemon.echo), ``bulk_bytes``, ``seed``, ``sample_every``.

"plain" sends the daemon.echo messages to the plain echo server, which sends
each back as it is. "bulk" asks that server for answers of ``bulk_bytes``
(the message ``bulk N``): the transport's ceiling for answers as big as the
queries' (a files.list answer of 60 files is tens of kB).

Each client sends one message (a JSON-RPC batch of ``batch`` calls, or a
single call when ``batch`` is 1) and waits for its answer before the next.
A call counts once its answer arrived inside the window. Every
``sample_every``-th answer is decoded in full and checked (the right product,
the latest complete reference time, 60 files of the right instance on the
right backend, the echoed data); the others are counted by their result
objects, whose text the server writes as ``{"jsonrpc":"2.0","result":`` (see
muppet/api/protocol.py ``encode``), and any ``"error":`` in them is counted
as a failure.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time

import trio
import trio_websocket

RESULT = '{"jsonrpc":"2.0","result":'
MAX_MESSAGE = 64 * 1024 * 1024
#: bytes per socket read: trio-websocket's default, 4 KiB, costs a trip
#: through wsproto and the event loop per 4 KiB, which made these clients
#: (not the daemon) the limit on answers of hundreds of kB
RECEIVE_BYTES = 256 * 1024


def _calls(spec: dict) -> tuple[list[str], list[tuple]]:
    """The text of each call the clients may send (its id is its index in the
    list) and what a correct answer looks like."""
    texts: list[str] = []
    expect: list[tuple] = []
    if spec["mix"] in ("echo", "plain"):
        texts.append(json.dumps({"jsonrpc": "2.0", "method": "daemon.echo",
                                 "params": {"data": spec["echo"]}, "id": 0}, separators=(",", ":")))
        expect.append(("echo", spec["echo"]))
        return texts, expect
    for slug, reference_time in sorted(spec["products"].items()):
        texts.append(json.dumps({"jsonrpc": "2.0", "method": "instances.latest",
                                 "params": {"product": slug, "complete": True}, "id": len(texts)},
                                separators=(",", ":")))
        expect.append(("latest", slug, reference_time))
    fields = spec.get("fields")
    for instance_id, slug in spec["instances"]:
        params = {"instance_id": instance_id, "backend": spec["backend"]}
        if fields is not None:
            params["fields"] = fields
        texts.append(json.dumps({"jsonrpc": "2.0", "method": "files.list", "params": params, "id": len(texts)},
                                separators=(",", ":")))
        expect.append(("files", instance_id, slug, spec["backend"], spec["file_count"], fields))
    return texts, expect


def _check(entry: dict, want: tuple) -> str | None:
    """Why an answer is wrong, or None."""
    if "result" not in entry:
        return f"error answer: {entry.get('error')}"
    result = entry["result"]
    if want[0] == "echo":
        return None if result == want[1] else f"echo came back as {result!r}"
    if want[0] == "latest":
        _, slug, reference_time = want
        if not isinstance(result, dict) or result.get("product") != slug:
            return f"latest of {slug}: got {str(result)[:200]}"
        if result.get("reference_time") != reference_time or result.get("completed_at") is None:
            return f"latest complete of {slug}: want {reference_time}, got {str(result)[:200]}"
        return None
    _, instance_id, slug, backend, file_count, fields = want
    items = result.get("items") if isinstance(result, dict) else None
    if not isinstance(items, list) or len(items) != file_count or result.get("next") is not None:
        return f"files of instance {instance_id}: {len(items or [])} files, want {file_count}"
    if fields is not None:
        # the compact answer: exactly the fields asked for, of this product's files
        for item in items:
            if sorted(item) != sorted(fields) or f"/{slug}/{slug}_" not in item.get("url", ""):
                return f"compact files of instance {instance_id}: {str(item)[:200]}"
        return None
    for item in items:
        if (item.get("instance_id"), item.get("product"), item.get("backend")) != (instance_id, slug, backend):
            return f"files of instance {instance_id}: a file of another instance: {str(item)[:200]}"
    return None


async def _client(spec: dict, number: int, stats: dict, texts: list[str], expect: list[tuple]) -> None:
    rng = random.Random(spec["seed"] * 1000 + number)
    batch = spec["batch"]
    plain = spec["mix"] == "plain"
    bulk = spec["mix"] == "bulk"
    latest = len(spec["products"]) if spec["mix"] == "query" else 0
    share = spec.get("files_share", 0.5)
    count = len(texts)

    def pick() -> int:
        if spec["mix"] != "query":
            return 0
        if rng.random() < share:
            return rng.randrange(latest, count)
        return rng.randrange(latest)

    async with trio_websocket.open_websocket_url(
        spec["url"], max_message_size=MAX_MESSAGE, receive_buffer_size=RECEIVE_BYTES
    ) as ws:
        stats["connected"] += 1
        await trio.sleep(max(0.0, spec["start_at"] - time.time()))
        end = spec["start_at"] + spec["seconds"]
        sent = 0
        while time.time() < end:
            chosen = [pick() for _ in range(batch)]
            if bulk:
                message = f"bulk {spec['bulk_bytes']}"
            elif batch == 1:
                message = texts[chosen[0]]
            else:
                message = "[" + ",".join(texts[k] for k in chosen) + "]"
            await ws.send_message(message)
            answer = await ws.get_message()
            if time.time() > end:
                break  # answered outside the window: not counted
            sent += 1
            stats["messages"] += 1
            stats["bytes_in"] += len(answer)
            if bulk:
                if len(answer) == spec["bulk_bytes"]:
                    stats["calls"] += batch
                else:
                    stats["bad"] += 1
                    stats.setdefault("why", f"bulk answer of {len(answer)} characters")
                continue
            if plain:
                if answer == message:
                    stats["calls"] += batch
                else:
                    stats["bad"] += 1
                    stats.setdefault("why", f"plain echo differs: {answer[:200]!r}")
                continue
            if sent % spec["sample_every"] == 1 or spec["sample_every"] == 1:
                decoded = json.loads(answer)
                entries = decoded if isinstance(decoded, list) else [decoded]
                if len(entries) != batch:
                    stats["bad"] += batch
                    stats.setdefault("why", f"{len(entries)} answers to {batch} calls")
                    continue
                for k, entry in zip(chosen, entries, strict=True):
                    stats["checked"] += 1
                    why = "wrong id" if entry.get("id") != k else _check(entry, expect[k])
                    if why is None:
                        stats["calls"] += 1
                    else:
                        stats["bad"] += 1
                        stats.setdefault("why", why)
            else:
                answered = answer.count(RESULT)
                failed = answer.count('"error":')
                if answered != batch or failed:
                    stats["bad"] += batch - answered + failed
                    stats.setdefault("why", f"{answered} results, {failed} errors to {batch} calls: {answer[:200]!r}")
                stats["calls"] += answered - failed


async def _clients(spec: dict) -> dict:
    texts, expect = _calls(spec)
    stats = {"connected": 0, "messages": 0, "calls": 0, "checked": 0, "bad": 0, "bytes_in": 0}
    before = None
    async with trio.open_nursery() as nursery:
        for number in range(spec["clients"]):
            nursery.start_soon(_client, spec, number, stats, texts, expect)
        await trio.sleep(max(0.0, spec["start_at"] - time.time()))
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.time()
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats["wall"] = time.time() - wall
    return stats


async def _echo_server(port: int) -> None:
    bulk: dict[int, str] = {}

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        try:
            ws = await request.accept()
            while True:
                message = await ws.get_message()
                if isinstance(message, str) and message.startswith("bulk "):
                    size = int(message[5:])
                    if size not in bulk:
                        bulk[size] = ('{"x":"' + "abcdefgh" * (size // 8 + 1))[: size - 2] + '"}'
                    message = bulk[size]
                await ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            pass

    await trio_websocket.serve_websocket(handler, "127.0.0.1", port, ssl_context=None,
                                         max_message_size=MAX_MESSAGE)


def main(argv: list[str]) -> None:
    if argv[:1] == ["clients"]:
        with open(argv[1]) as f:
            spec = json.load(f)
        print(json.dumps(trio.run(_clients, spec)), flush=True)
    elif argv[:1] == ["echo-server"]:
        trio.run(_echo_server, int(argv[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
