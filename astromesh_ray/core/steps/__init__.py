"""The shared steps every pattern is made of.

A pattern decides *what* to do next; these do it, the same way for every pattern:

- ``ModelStep``: one routed model call for a role.  It counts against
  ``max_iterations``, streams tokens as ``Token`` events when the run streams,
  records usage and a ``model_call`` span (parenting the provider's own spans) and
  ends with a ``ModelCall`` event.
- ``tool_step`` / ``tool_round``: tool calls with the permission check, argument
  validation, a timeout, the result size cap and a ``tool_call`` span; results go
  into the transcript in call order.
- ``Delegation``: a sub-run of a peer agent (``delegate`` or ``handoff``).
- ``record_thought`` / ``record_answer``: the step records and their events.

Every wait is bounded by the run's deadline here, in the steps, so the time a
client takes to read events is never charged to the agent.
"""

from __future__ import annotations

from astromesh_ray.core.steps.delegation import Delegation
from astromesh_ray.core.steps.limits import (
    LimitReached,
    bounded,
    deadline_exceeded,
    iterations_exhausted,
)
from astromesh_ray.core.steps.model import ModelStep, assemble
from astromesh_ray.core.steps.records import record, record_answer, record_thought
from astromesh_ray.core.steps.tools import ToolOutcome, gather_all, tool_round, tool_step

__all__ = [
    "Delegation",
    "LimitReached",
    "ModelStep",
    "ToolOutcome",
    "assemble",
    "bounded",
    "deadline_exceeded",
    "gather_all",
    "iterations_exhausted",
    "record",
    "record_answer",
    "record_thought",
    "tool_round",
    "tool_step",
]
