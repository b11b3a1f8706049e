"""The API's ``daemon.reload``: read the configuration again without a
restart (docs/api.md, "daemon.reload"; docs/operations.md, "Reload").

The reload task (``muppet/reloader.py``) does the work; this handler asks
it, and relays its answer: what changed, once committed, or the problems
that refused it (-32006, each problem in ``data.problems``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from ..db import reads
from ..messages import Operator
from .context import Connection, Context
from .index import READ_YOUR_WRITES_WAIT
from .protocol import INTERNAL_ERROR, RpcError


async def daemon_reload(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    # who asks, as for every operator's command (docs/operations.md, "Who did what")
    outcome = await ctx.reload(Operator(conn.token_name or "local", params["reason"] or ""))
    if outcome.error is not None:
        data = {"problems": list(outcome.problems)} if outcome.problems else None
        raise RpcError(outcome.code or INTERNAL_ERROR, outcome.error, data)
    if outcome.result["changed"]:
        # read-your-writes, as for an index write: the events of the reload's
        # transaction (its declarations) are applied to the hot answers
        # before the caller's next query
        newest = await ctx.query(reads.last_event_id)
        with trio.move_on_after(READ_YOUR_WRITES_WAIT):
            await ctx.hub.wait_for(newest)
    return outcome.result


HANDLERS = {
    "daemon.reload": daemon_reload,
}
