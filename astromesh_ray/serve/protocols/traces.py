"""``GET /v1/traces/{trace_id}``: a recent run's span tree, from this gateway replica.

Each gateway replica keeps the traces of the runs it served in a bounded ring
(``spec.telemetry.recent`` of runtime.yaml: 1000 traces, each an hour after its last
run, by default; ``serve/telemetry.py``), so a trace the client got a ``trace_id``
for can be read back, nested by parent, without a tracing backend.  Traces are not
shared between replicas: with several, a request may reach one that did not serve
the run (the 404's hint says so); the exported OpenTelemetry spans are the durable,
cluster-wide record.
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
import re
from typing import Any

from astromesh_ray.errors import InvalidRequest, TraceNotFound
from astromesh_ray.serve.app import api
from astromesh_ray.serve.auth import current_key
from astromesh_ray.serve.gateway_core import GatewayCore
from astromesh_ray.serve.telemetry import span_tree

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


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
        spans = self._telemetry.recent.get(trace_id, None if key.admin else key.caller.id)
        if spans is None:
            raise TraceNotFound(
                f"no recent trace {trace_id!r} in this gateway replica",
                hint="traces are kept per gateway replica, for a limited time "
                "(spec.telemetry.recent): it may have expired, or have been served by "
                "another replica; the exported OpenTelemetry spans have every trace",
                trace_id=trace_id,
            )
        return {"trace_id": trace_id, "span_count": len(spans), "spans": span_tree(spans)}
