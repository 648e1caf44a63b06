"""``GET /v1/traces/{trace_id}``: a recent run's span tree, without a tracing backend.

The replica that answers a run keeps its trace in a bounded ring
(``spec.telemetry.recent`` of runtime.yaml: 1000 traces, each an hour after its last
run, by default; ``serve/telemetry.py``): the gateway's replica for the routes it
answers, the agent application's replica for ``/v1/agents/{name}/...``
(``agent_routes.py``).  So the gateway reads its own ring, then asks the agents'
applications (``AgentDeployment.recent_trace``, by handle: one replica of each) for
their part: every agent when it holds nothing, else the agents its part names (a run
started here and resumed through the agent's own routes, say).  The parts are merged
by span id and nested by parent.  With several replicas of an app, a request may
reach one that did not serve the run (the 404's hint says so); the exported
OpenTelemetry spans are the durable, cluster-wide record.
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from astromesh_ray.errors import AstromeshError, InvalidRequest, TraceNotFound
from astromesh_ray.serve.app import api
from astromesh_ray.serve.auth import current_key
from astromesh_ray.serve.gateway_core import GatewayCore
from astromesh_ray.serve.telemetry import MAX_SPANS, span_tree

logger = logging.getLogger(__name__)

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# How long the gateway waits for an agent application's part of a trace.
TRACE_PATIENCE_S = 5.0


def agents_in(spans: Sequence[Mapping[str, Any]]) -> set[str]:
    """The agents whose runs ``spans`` hold (their edge and ``run`` spans say)."""
    return {
        str(s["attributes"]["agent"])
        for s in spans
        if s.get("name") in ("gateway", "run") and (s.get("attributes") or {}).get("agent")
    }


class TraceRoutes(GatewayCore):
    """The recent-traces route."""

    @api.get("/v1/traces/{trace_id}")
    async def get_trace(self, trace_id: str) -> dict[str, Any]:
        """The spans of a recent trace, nested by parent (``children``)."""
        trace_id = trace_id.lower()
        if not _TRACE_ID.match(trace_id):
            raise InvalidRequest(
                f"invalid trace id {trace_id[:40]!r}",
                hint="a trace id is 32 hex digits (a reply's trace_id)",
                field="trace_id",
            )
        key = current_key()  # a key reads its own runs' traces (admin: any)
        owner = None if key.admin else key.caller.id
        own = self._telemetry.recent.get(trace_id, owner) or []
        asked = sorted(agents_in(own) if own else self._apps)
        parts = await asyncio.gather(
            *(self._agent_trace(name, trace_id, owner) for name in asked if name in self._apps)
        )
        merged = {str(s.get("span_id")): s for part in (own, *parts) for s in part}
        if not merged:
            raise TraceNotFound(
                f"no recent trace {trace_id!r} in the gateway or the agents' applications",
                hint="a trace is kept by the replica that answered the run (the gateway's, "
                "or the agent application's for /v1/agents/{name}/...), for a limited time "
                "(spec.telemetry.recent): it may have expired, or be held by another replica "
                "of that application; the exported OpenTelemetry spans have every trace",
                trace_id=trace_id,
            )
        spans = list(merged.values())[:MAX_SPANS]
        return {"trace_id": trace_id, "span_count": len(spans), "spans": span_tree(spans)}

    async def _agent_trace(
        self, name: str, trace_id: str, owner: str | None
    ) -> list[Mapping[str, Any]]:
        """Agent ``name``'s application's part of the trace (none when it cannot be
        asked: a trace read does not fail for an agent that is down)."""
        try:
            spans = await self._link.call(
                name, "recent_trace", trace_id, owner, patience_s=TRACE_PATIENCE_S
            )
        except AstromeshError as exc:  # AgentUnavailable, or a bug in the replica
            logger.info("trace %s: agent %r not asked: %s", trace_id, name, exc.message)
            return []
        return list(spans or [])
