"""Resuming a paused run: check the caller's answer against what the run waits on,
then complete the pending tool calls in the restored turn state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event, PendingToolCall
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.core.runs.paused import PausedRun, ToolDecision
from astromesh_ray.core.steps.tools import (
    ToolOutcome,
    cap_result,
    gather_all,
    record_outcome,
    sub_run_share,
    tool_step,
)
from astromesh_ray.core.tools.base import DEFAULT_MAX_RESULT_CHARS, ToolResult
from astromesh_ray.errors import InvalidRequest

_ACTIONS = {"client": ("result",), "approval": ("approve", "reject")}


def check_answer(run: PausedRun, decisions: Sequence[ToolDecision]) -> None:
    """Refuse an answer that does not fit the paused run: unknown or repeated call
    ids, the wrong kind of answer for a call (a result for an approval, ...), or
    calls left unanswered (``InvalidRequest`` naming them).  Nothing is changed by
    a refused answer.  A run with nothing pending (a checkpoint) takes none."""
    pending = {p.id: p for p in run.pending}
    seen: set[str] = set()
    for index, decision in enumerate(decisions):
        where = f"decisions[{index}].tool_call_id"
        call = pending.get(decision.call_id)
        if call is None:
            waiting = ", ".join(f"{p.id} ({p.name})" for p in run.pending)
            raise InvalidRequest(
                f"run {run.run_id} is not waiting on tool call {decision.call_id!r}",
                hint=f"pending calls: {waiting}" if waiting else "nothing is pending: retry it",
                field=where,
            )
        if decision.call_id in seen:
            raise InvalidRequest(f"tool call {decision.call_id!r} is answered twice", field=where)
        seen.add(decision.call_id)
        if decision.action not in _ACTIONS[call.kind]:
            wanted = (
                "post its result to .../tool_results"
                if call.kind == "client"
                else "approve or reject it (.../approve, .../reject)"
            )
            raise InvalidRequest(
                f"tool call {call.id!r} ({call.name}) is "
                + ("a client" if call.kind == "client" else "an approval")
                + f" call: {wanted}",
                field=where,
            )
    missing = [p for p in run.pending if p.id not in seen]
    if missing:
        raise InvalidRequest(
            "the run also waits on "
            + ", ".join(f"{p.id} ({p.name}, {p.kind})" for p in missing)
            + ": answer every pending call at once",
            hint="GET /v1/agents/{name}/runs/{run_id} lists the pending calls",
            field="decisions",
        )


async def complete_pending(
    ctx: RunContext,
    state: TurnState,
    pending: Sequence[PendingToolCall],
    decisions: Sequence[ToolDecision],
) -> AsyncIterator[Event]:
    """Record the caller's client results, run the approved calls (concurrently),
    and tell the model about rejected ones; all recorded in the order the model made
    the calls."""
    by_id = {d.call_id: d for d in decisions}
    approved = [p for p in pending if by_id[p.id].action == "approve"]
    # Approved sub-runs (agent tools) share the model calls left, as in tool_round.
    share = sub_run_share(ctx, state, len(approved)) if len(approved) > 1 else None
    ran = await gather_all(
        [
            tool_step(
                ctx, state, _call(p), iteration=p.iteration, approved=True, iterations_left=share
            )
            for p in approved
        ]
    )
    outcomes: dict[str, ToolOutcome] = {o.call.id: o for o in ran}
    for p in pending:
        decision = by_id[p.id]
        if decision.action == "result":
            result = ToolResult(content=decision.content, is_error=decision.is_error)
            entry = ctx.tools.get(p.name)
            cap_result(result, entry.tool.max_result_chars if entry else DEFAULT_MAX_RESULT_CHARS)
            outcomes[p.id] = ToolOutcome(_call(p), result, 0.0)
        elif decision.action == "reject":
            reason = f": {decision.content}" if decision.content else ""
            result = ToolResult(
                content=f"error: the caller rejected this call to {p.name!r}{reason}; "
                "do not call it again with the same arguments",
                is_error=True,
            )
            outcomes[p.id] = ToolOutcome(_call(p), result, 0.0)
    for p in pending:
        for event in record_outcome(state, outcomes[p.id], p.iteration):
            yield event


def _call(pending: PendingToolCall) -> ToolCall:
    return ToolCall(id=pending.id, name=pending.name, arguments=pending.arguments)


def decisions_for(
    run: PausedRun,
    action: str,
    *,
    results: Sequence[tuple[str, str, bool]] = (),
    call_ids: Sequence[str] | None = None,
    reason: str | None = None,
    each: Sequence[tuple[str, str, str]] = (),
) -> list[ToolDecision]:
    """The decisions an API request makes.

    ``action`` ``result``: client ``results`` (``(call id, content, is_error)``)
    only.  ``approve`` / ``reject``: that decision for ``call_ids`` (default: every
    pending approval the request does not decide otherwise), with ``reason``; plus
    per-call decisions ``each`` (``(call id, approve | reject, reason)``) and client
    ``results`` given in the same request.  ``retry``: none (a checkpoint)."""
    if action == "retry":
        if run.pending:
            raise InvalidRequest(
                f"run {run.run_id} waits on "
                + ", ".join(f"{p.id} ({p.name}, {p.kind})" for p in run.pending)
                + ": answer those instead",
                field="run_id",
            )
        return []
    decisions = [ToolDecision(cid, "result", content, err) for cid, content, err in results]
    if action == "result":
        return decisions
    if action not in ("approve", "reject"):
        raise InvalidRequest(f"unknown decision {action!r}")
    for cid, each_action, why in each:
        if each_action not in ("approve", "reject"):
            raise InvalidRequest(f"unknown decision {each_action!r} for {cid!r}", field="decisions")
        decisions.append(
            ToolDecision(cid, "approve" if each_action == "approve" else "reject", why)
        )
    decided = {d.call_id for d in decisions}
    ids = (
        list(call_ids)
        if call_ids is not None
        else [p.id for p in run.pending if p.kind == "approval" and p.id not in decided]
    )
    if not ids and not each:
        if call_ids is not None:
            raise InvalidRequest(
                "tool_call_ids is empty: name the calls decided", field="tool_call_ids"
            )
        raise InvalidRequest(f"run {run.run_id} waits on no approval", field="tool_call_ids")
    verb: Literal["approve", "reject"] = "approve" if action == "approve" else "reject"
    decisions += [ToolDecision(cid, verb, reason or "") for cid in ids]
    return decisions


def paused_view(run: PausedRun) -> dict[str, Any]:
    """What the API shows of a paused run (not its transcript: the caller has it)."""
    return {
        "run_id": run.run_id,
        "agent": run.agent,
        # interrupted: its calls were answered, then the run failed (retry it).
        "status": "interrupted" if run.interrupted else "requires_action",
        "error": run.error,
        "session_id": run.request.session_id,
        "trace_id": run.trace_id,
        "created_at": run.created_at,
        "pending": [p.to_dict() for p in run.pending],
    }
