"""OpenAIProvider policies: options, API-key scoping, retries, usage estimates, and
provider vllm (external) through the YAML path, against real loopback servers."""

from __future__ import annotations

from typing import Any

import pytest

from astromesh_ray.core.messages import CompletionRequest, Message
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.errors import ConfigError, ProviderError
from astromesh_ray.testing import ScriptedOpenAIServer


def _ask(text: str, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=[Message(role="user", content=text)], **kwargs)


async def test_options_organization_and_headers_are_sent() -> None:
    with ScriptedOpenAIServer(["ok"]) as server:
        provider = OpenAIProvider(
            name="compat:m",
            kind="openai_compat",
            model="m",
            endpoint=server.url,
            options={"organization": "org-1", "headers": {"X-Team": "cx"}},
        )
        try:
            await provider.complete(CompletionRequest(messages=[Message("user", "hi")]))
        finally:
            await provider.aclose()
        headers = {k.lower(): v for k, v in server.request_headers[-1].items()}
        assert headers["openai-organization"] == "org-1" and headers["x-team"] == "cx"


def test_unknown_options_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown options 'chat_template'.*") as info:
        OpenAIProvider(name="x", kind="openai_compat", model="m", options={"chat_template": "x"})
    assert "organization" in str(info.value.hint)


async def test_retry_after_header_is_parsed_and_retries_succeed() -> None:
    from astromesh_ray.core.providers.retry import RetryingProvider

    with ScriptedOpenAIServer(
        [{"status": 429, "error": "slow down", "retry_after": 0.01}]
    ) as server:
        provider = OpenAIProvider(
            name="compat:m", kind="openai_compat", model="m", endpoint=server.url
        )
        try:
            with pytest.raises(ProviderError) as info:
                await provider.complete(CompletionRequest(messages=[Message("user", "hi")]))
            assert info.value.details["retry_after_s"] == pytest.approx(0.01)
            server.add_steps(
                {"status": 503, "error": "busy", "retry_after": 0.01}, "after the wait"
            )
            retrying = RetryingProvider(provider, max_retries=1)
            completion = await retrying.complete(
                CompletionRequest(messages=[Message("user", "hi")])
            )
        finally:
            await provider.aclose()
        assert completion.message.content == "after the wait"
        assert len(server.requests) == 3


async def test_openai_key_is_never_sent_to_other_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    with ScriptedOpenAIServer(["a", "b"]) as server:
        for kind in ("openai", "openai_compat"):
            provider = OpenAIProvider(name="x", kind=kind, model="m", endpoint=server.url)
            try:
                await provider.complete(CompletionRequest(messages=[Message("user", "hi")]))
            finally:
                await provider.aclose()
        sent = [{k.lower(): v for k, v in h.items()} for h in server.request_headers]
        assert all("authorization" not in h for h in sent)
    assert OpenAIProvider(name="o", kind="openai", model="m").api_key_env == "OPENAI_API_KEY"


async def test_react_turn_through_an_external_vllm_server(tmp_path: Any) -> None:
    """`provider: vllm` (external mode) is vLLM's OpenAI-compatible server: a full
    ReAct turn with a tool call through the YAML path, against that wire format."""
    from astromesh_ray.core.build import build_runtime
    from astromesh_ray.core.context import RunRequest
    from astromesh_ray.spec import load_agent

    steps = [
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
        "It is 42.",
    ]
    with ScriptedOpenAIServer(steps, model="mistral-7b") as server:
        path = tmp_path / "v.agent.yaml"
        path.write_text(
            "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: on-vllm}\nspec:\n"
            "  model:\n    primary: {provider: vllm, model: mistral-7b, "
            f"endpoint: '{server.url}'}}\n"
            "  tools: [{name: calculator, type: builtin}]\n"
        )
        runtime = build_runtime(load_agent(path))
        try:
            result = await runtime.run(RunRequest(query="6*7?"))
        finally:
            await runtime.aclose()
        assert result.answer == "It is 42."
        assert result.to_dict()["steps"][0]["result"] == "42"
        assert server.requests[-1]["messages"][-1] == {
            "role": "tool",
            "tool_call_id": server.requests[-1]["messages"][-2]["tool_calls"][0]["id"],
            "content": "42",
        }
        server.assert_consumed()


def test_usage_is_estimated_when_a_server_reports_none() -> None:
    from astromesh_ray.core.messages import Usage
    from astromesh_ray.core.providers.openai_wire import estimate_usage

    request = _ask("x" * 400)
    usage = estimate_usage(request, "y" * 80, [])
    assert usage == Usage(input_tokens=100, output_tokens=20, calls=1)


async def test_llamacpp_usage_is_estimated_when_the_server_cannot_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """llama-cpp-python streams no usage; when its /extras/tokenize/count fails too
    (here: a server without it), usage is the ~4 chars/token estimate, with a warning,
    never 0."""
    import logging

    from astromesh_ray.core.messages import Usage

    answer = "y" * 80
    with ScriptedOpenAIServer([answer], stream_usage=False) as server:
        provider = OpenAIProvider(
            name="llamacpp:tiny", kind="llamacpp", model="tiny", endpoint=server.url
        )
        try:
            with caplog.at_level(logging.WARNING, logger="astromesh.providers"):
                chunks = [c async for c in provider.stream(_ask("x" * 400))]
        finally:
            await provider.aclose()
    assert chunks[-1].usage == Usage(input_tokens=100, output_tokens=20, calls=1)
    [warning] = [r for r in caplog.records if r.name == "astromesh.providers"]
    assert warning.levelno == logging.WARNING
    assert "/extras/tokenize/count" in warning.getMessage()
    assert "llamacpp:tiny" in warning.getMessage()
