"""The ``capability_match`` strategy: what a model request needs, and which of the
router's candidates can serve it.

A candidate's ``capabilities`` come from YAML (``capabilities: [tools, json_schema]``
on a model block or a providers.yaml entry).  ``None`` means *not declared*: nothing
is known about the model, so it is assumed to fit and is never dropped; a declared
list is complete, so what it leaves out the model lacks.  We keep no table of known
models: whether a model calls tools depends on the model, its version and the server
template serving it, and a table that guesses wrong would drop a working model.

What a request needs:

- ``tools`` when it offers tools.  A model without native tool calls cannot serve it,
  so candidates that lack ``tools`` are dropped (recorded on the route as
  ``lacks tools``); when none is left, the call fails with a ``ProviderError`` naming
  the missing capability.
- ``json_schema`` when it asks for an answer matching a schema.  This need is soft:
  the engine validates every structured answer and asks again when it does not
  match, so a model that cannot constrain its decoding still serves, just less
  surely.  Candidates that have it (or do not say) are tried first, those that lack
  it after them, each group in declared order.
- ``vision`` is never needed: our messages carry text only (``Message.content`` is a
  string, with no image parts), so the YAML refuses ``vision`` until image input
  exists, when requests with image parts will need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from astromesh_ray.core.messages import CompletionRequest
from astromesh_ray.errors import ProviderError

HARD_NEEDS = ("tools",)
"""Needs a candidate must meet to be called at all."""
SOFT_NEEDS = ("json_schema",)
"""Needs that only order the candidates: those meeting them go first."""


class Capable(Protocol):
    """What the screen reads of a candidate."""

    @property
    def key(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[str] | None: ...


C = TypeVar("C", bound=Capable)


def request_needs(request: CompletionRequest) -> tuple[str, ...]:
    """The capabilities ``request`` needs, hard ones first."""
    needs = []
    if request.tools:
        needs.append("tools")
    if request.response_schema is not None:
        needs.append("json_schema")
    return tuple(needs)


@dataclass
class Screen(Generic[C]):
    """The candidates that can serve one request, in the order to try them, each with
    the reason for its place; and those dropped, each with what it lacks."""

    needs: tuple[str, ...]
    kept: list[tuple[C, str]] = field(default_factory=list)
    dropped: list[tuple[C, str]] = field(default_factory=list)


def screen(candidates: Sequence[C], request: CompletionRequest) -> Screen[C]:
    """Split ``candidates`` (in declared order) by what ``request`` needs."""
    needs = request_needs(request)
    result: Screen[C] = Screen(needs)
    later: list[tuple[C, str]] = []
    for candidate in candidates:
        declared = candidate.capabilities
        lacking = [] if declared is None else [n for n in needs if n not in declared]
        hard = [n for n in lacking if n in HARD_NEEDS]
        if hard:
            result.dropped.append((candidate, "lacks " + ", ".join(hard)))
        elif lacking:
            later.append(
                (
                    candidate,
                    "lacks " + ", ".join(lacking) + ": its answer is validated, not constrained",
                )
            )
        elif not needs:
            result.kept.append((candidate, "request needs no capability"))
        elif declared is None:
            result.kept.append((candidate, "capabilities not declared: assumed to fit"))
        else:
            result.kept.append((candidate, "has " + ", ".join(needs)))
    result.kept.extend(later)
    return result


def unfit_error(router: str, found: Screen[Any], route: list[dict[str, Any]]) -> ProviderError:
    """The error when every candidate lacks a hard need of the request."""
    missing = [n for n in found.needs if n in HARD_NEEDS]
    listed = ", ".join(
        f"{c.key} ({', '.join(sorted(c.capabilities or ())) or 'no capabilities'})"
        for c, _ in found.dropped
    )
    return ProviderError(
        f"no model candidate supports {' and '.join(missing)}, which this request needs "
        f"(capability_match; declared: {listed})",
        hint=f"add {' and '.join(missing)} to the capabilities of a candidate that "
        "supports it, or add such a candidate",
        provider=router,
        status=None,
        retryable=False,
        missing=missing,
        route=route,
    )
