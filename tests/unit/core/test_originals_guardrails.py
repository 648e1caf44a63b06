"""The original Astromesh's example agents with guardrails (support-agent,
sales-qualifier, whatsapp-assistant, autolink-parts): their guardrail blocks, as the
upstream files write them, load and act in a turn against a scripted model.

Each file is loaded verbatim but for what needs a server in unit tests (memory
backends), sales-qualifier's chain to another agent and its structured output,
and, for support-agent, its plan_and_execute orchestration (covered in
test_originals_run.py, guardrails included): here a ReAct turn, so the scripted
model answers once.  Every input block redacts PII before the model; output
pii_detection redacts the answer; max_length blocks a longer message; cost_limit's
max_tokens_per_turn ends a turn whose estimate passes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from astromesh_ray.core.build import build_runtime, check_buildable
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.factory import default_memory_factory
from astromesh_ray.core.messages import CompletionRequest
from astromesh_ray.errors import BudgetExceeded, GuardrailViolation
from astromesh_ray.spec import AgentSpec
from astromesh_ray.testing import ScriptedProvider

ORIGINAL = Path(__file__).parents[1] / "spec" / "data" / "original"
EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"

# name -> (output redacts PII, max_length cap, cost_limit's max_tokens_per_turn)
GUARDED: dict[str, tuple[bool, int | None, int | None]] = {
    "support-agent": (True, None, 500),
    "sales-qualifier": (False, 5000, 1000),
    "whatsapp-assistant": (True, 2000, None),
    "autolink-parts": (False, None, 800),
}


def original(name: str) -> AgentSpec:
    data = yaml.safe_load((ORIGINAL / f"{name}.agent.yaml").read_text(encoding="utf-8"))
    # Servers; another agent and a JSON answer (test_chain.py and
    # test_structured_output.py run those).
    for key in ("memory", "chain", "output_schema"):
        data["spec"].pop(key, None)
    if name == "support-agent":
        data["spec"]["orchestration"]["pattern"] = "react"
    agent = AgentSpec.model_validate(data)
    check_buildable([agent])
    return agent


def user_text(request: CompletionRequest) -> str:
    return "\n".join(m.content or "" for m in request.messages if m.role == "user")


async def turn(tmp_path: Path, name: str, query: str, answer: str) -> tuple[Any, ScriptedProvider]:
    model = ScriptedProvider([answer])
    memory = default_memory_factory(tmp_path / "data")
    runtime = build_runtime(original(name), provider=model, memory=memory)
    try:
        return await runtime.run(RunRequest(query=query)), model
    finally:
        await runtime.aclose()
        await memory.aclose()


@pytest.mark.parametrize("name", sorted(GUARDED))
async def test_input_pii_never_reaches_the_model(tmp_path: Path, name: str) -> None:
    result, model = await turn(tmp_path, name, f"I am {EMAIL}, call {PHONE}.", "Noted.")
    sent = user_text(model.requests[0])
    assert EMAIL not in sent and "7946" not in sent
    assert "I am [EMAIL_1], call [PHONE_1]." in sent
    directions = [s.attributes["direction"] for s in result.trace if s.name == "guardrail"]
    assert "input" in directions


@pytest.mark.parametrize("name", sorted(GUARDED))
async def test_output_pii_is_redacted_where_the_agent_says_so(tmp_path: Path, name: str) -> None:
    redacts, _, _ = GUARDED[name]
    result, _ = await turn(tmp_path, name, "Who do I write to?", f"Write to {EMAIL}.")
    assert result.answer == ("Write to [EMAIL_1]." if redacts else f"Write to {EMAIL}.")


@pytest.mark.parametrize("name", [n for n, (_, cap, _) in GUARDED.items() if cap])
async def test_max_length_blocks_a_longer_message(tmp_path: Path, name: str) -> None:
    cap = GUARDED[name][1]
    assert cap is not None
    model = ScriptedProvider(["never"])
    runtime = build_runtime(original(name), provider=model)
    try:
        with pytest.raises(GuardrailViolation) as caught:
            await runtime.run(RunRequest(query="x" * (cap + 1)))
        assert caught.value.details["guardrail"] == "max_length"
        assert model.requests == []  # the model was never called
        fits = await runtime.run(RunRequest(query="y" * 10))
        assert fits.answer == "never"
    finally:
        await runtime.aclose()


@pytest.mark.parametrize("name", [n for n, (_, _, cap) in GUARDED.items() if cap])
async def test_cost_limit_ends_a_turn_past_max_tokens_per_turn(tmp_path: Path, name: str) -> None:
    cap = GUARDED[name][2]
    assert cap is not None
    model = ScriptedProvider([])  # a call would fail the test
    runtime = build_runtime(original(name), provider=model)
    try:
        # Words enough that the call's estimate passes the cap (but not max_length).
        query = " ".join(["word"] * (cap + 50))[: (GUARDED[name][1] or 10**6)]
        with pytest.raises(BudgetExceeded) as caught:
            await runtime.run(RunRequest(query=query))
        assert caught.value.details["cap"] == "max_tokens_per_turn"
        assert model.requests == []  # refused on the estimate, before the call
    finally:
        await runtime.aclose()
