"""``text_summarize``: the run's own model (role summarizer, else the first), its
usage in the result, short texts returned unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from astromesh_ray.core.messages import CompletionRequest
from astromesh_ray.core.tools.base import Tool
from astromesh_ray.core.tools.builtins.summarize import SYSTEM
from astromesh_ray.errors import ConfigError, ProviderError, ToolError
from astromesh_ray.testing import ScriptedProvider
from astromesh_ray.testing.scripted import count_words

from .builtin_helpers import call, context, make_tool, tool_env

LONG = " ".join(f"word{i}" for i in range(120))  # 120 words, > 500 characters


def summarizer(tmp_path: Path, **config: object) -> Tool:
    return make_tool("text_summarize", tool_env(tmp_path), **config)


async def test_summarizes_with_the_first_model_and_reports_usage(tmp_path: Path) -> None:
    seen: list[CompletionRequest] = []

    def answer(request: CompletionRequest) -> str:
        seen.append(request)
        return "a short summary"

    model = ScriptedProvider([answer])
    ctx = context(models={"reasoner": model})
    result = await call(summarizer(tmp_path), ctx, text=LONG, max_length=30)
    assert result.content == "a short summary"
    assert result.data == {"summary": "a short summary", "was_summarized": True}
    assert result.usage is not None
    prompt = count_words(SYSTEM.format(words=30)) + 120
    assert (result.usage.output_tokens, result.usage.input_tokens) == (3, prompt)
    system, user = seen[0].messages
    assert system.role == "system" and "about 30 words" in (system.content or "")
    assert user.content == LONG
    assert seen[0].trace_parent == ctx.trace_parent


async def test_prefers_the_summarizer_role(tmp_path: Path) -> None:
    reasoner, summary = ScriptedProvider([]), ScriptedProvider(["from the summarizer"])
    ctx = context(models={"reasoner": reasoner, "summarizer": summary})
    result = await call(summarizer(tmp_path), ctx, text=LONG)
    assert result.content == "from the summarizer"
    assert reasoner.requests == []


async def test_config_role(tmp_path: Path) -> None:
    planner = ScriptedProvider(["planned"])
    ctx = context(models={"reasoner": ScriptedProvider([]), "planner": planner})
    assert (await call(summarizer(tmp_path, role="planner"), ctx, text=LONG)).content == "planned"
    with pytest.raises(ToolError, match="no model role 'critic'"):
        await call(summarizer(tmp_path, role="critic"), ctx, text=LONG)


async def test_short_text_is_returned_without_a_model_call(tmp_path: Path) -> None:
    model = ScriptedProvider([])
    result = await call(summarizer(tmp_path), context(models={"reasoner": model}), text="short")
    assert (result.content, result.usage) == ("short", None)
    assert result.data == {"summary": "short", "was_summarized": False}
    zero = summarizer(tmp_path, min_chars=0)
    model.add_steps("S")
    assert (await call(zero, context(models={"reasoner": model}), text="short")).content == "S"


async def test_model_failures_are_tool_errors(tmp_path: Path) -> None:
    failing = ScriptedProvider([ProviderError("down", provider="p", retryable=True)])
    with pytest.raises(ToolError, match="the model failed: down"):
        await call(summarizer(tmp_path), context(models={"reasoner": failing}), text=LONG)
    with pytest.raises(ToolError, match="no model"):
        await call(summarizer(tmp_path), context(models={}), text=LONG)
    empty = ScriptedProvider(["   "])
    result = await call(summarizer(tmp_path), context(models={"reasoner": empty}), text=LONG)
    assert result.is_error and result.usage is not None  # the tokens still count


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'model'"):
        summarizer(tmp_path, model="x")
