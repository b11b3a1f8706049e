"""The API's incidents: ``alerts.list``, ``alerts.get`` and ``alerts.ack``
(docs/api.md, "Incidents"; docs/alerts.md).

Reads go through the read stores; an acknowledgement is written through the
database task (an ``AlertWrite``, the single writer), with an operator event
naming who acknowledged it, as every operator's action has
(docs/operations.md, "Who did what").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import trio

from ..alerts import records
from ..alerts.changes import AckIncident, AlertWrite
from ..messages import CONFLICT, NOT_FOUND
from .context import Connection, Context
from .protocol import RpcError


async def _list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    found = await ctx.query(records.list_incidents, open_only=params["open"], limit=params["limit"])
    return [incident.to_dict() for incident in found]


async def _get(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    found = await ctx.query(records.get_incident, params["incident_id"])
    if found is None:
        raise RpcError(NOT_FOUND, f"unknown incident {params['incident_id']}", {"incident_id": params["incident_id"]})
    incident, notices = found
    return {**incident.to_dict(), "notices": notices}


async def _ack(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    incident_id = params["incident_id"]
    found = await ctx.query(records.get_incident, incident_id)
    if found is None:
        raise RpcError(NOT_FOUND, f"unknown incident {incident_id}", {"incident_id": incident_id})
    incident = found[0]
    if incident.resolved_at is not None:
        raise RpcError(CONFLICT, f"incident {incident_id} is resolved already ({incident.resolution})")
    if incident.acked_at is not None:
        raise RpcError(CONFLICT, f"incident {incident_id} was acknowledged already by {incident.acked_by}: "
                                 f"{incident.ack_reason}")
    ctx.refuse_while_database_away()
    # who, as for every operator's action (docs/operations.md, "Who did what")
    ack = AckIncident(incident_id, time.time(), conn.token_name or "local", params["reason"])
    send, receive = trio.open_memory_channel[bool](1)
    await ctx._wait(ctx.database, AlertWrite((ack,), send), receive, "database")
    found = await ctx.query(records.get_incident, incident_id)
    assert found is not None
    return found[0].to_dict()


HANDLERS = {
    "alerts.list": _list,
    "alerts.get": _get,
    "alerts.ack": _ack,
}
