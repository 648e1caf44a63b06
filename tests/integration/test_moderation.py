"""The moderation client and the content filter against the loopback
ScriptedOpenAIServer's ``/v1/moderations`` (OpenAI's wire format, checked with the
official ``openai`` client): hits, misses, the threshold, the request it sends,
the API key, and every failure is GuardrailUnavailable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from astromesh_ray.core.guardrails.content import ContentFilter
from astromesh_ray.core.guardrails.moderation import ModerationClient
from astromesh_ray.errors import GuardrailUnavailable
from astromesh_ray.spec.guardrails import ContentFilterSpec, ModerationSpec
from astromesh_ray.testing import ScriptedOpenAIServer
from astromesh_ray.testing.contexts import bare_context, bare_state
from astromesh_ray.testing.openai_server import MODERATION_CATEGORIES

from .conftest import free_port

pytestmark = pytest.mark.integration

RULES: dict[str, str | dict[str, float]] = {
    "kill": "violence",
    "despise": "hate/threatening",
    "rude": {"harassment": 0.3},
}


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as srv:
        srv.moderation_rules = dict(RULES)
        yield srv


def content_filter(url: str, **fields: Any) -> ContentFilter:
    moderation = {"endpoint": url, **fields.pop("moderation", {})}
    spec = ContentFilterSpec.model_validate(
        {"type": "content_filter", "moderation": moderation, **fields}
    )
    return ContentFilter(spec)


async def check(guard: ContentFilter, text: str) -> Any:
    try:
        return await guard.check(text, bare_context(), bare_state(), "input")
    finally:
        await guard.aclose()


def test_the_endpoint_speaks_openais_format(server: ScriptedOpenAIServer) -> None:
    client = openai.OpenAI(base_url=server.url, api_key="sk-test")
    answer = client.moderations.create(input="I will kill it", model="omni-moderation-latest")
    (result,) = answer.results
    assert answer.model == "omni-moderation-latest"
    assert result.flagged is True
    assert result.categories.violence is True
    assert result.categories.harassment is False
    assert result.category_scores.violence == pytest.approx(0.9)
    assert set(result.model_dump(by_alias=True)["categories"]) >= set(MODERATION_CATEGORIES)
    two = client.moderations.create(input=["fine", "so rude"])
    assert [r.flagged for r in two.results] == [False, False]
    assert two.results[1].category_scores.harassment == pytest.approx(0.3)


async def test_a_flagged_category_blocks(server: ScriptedOpenAIServer) -> None:
    guard = content_filter(server.url, categories=["violence", "hate"])
    verdict = await check(guard, "I will KILL the process")
    assert [f.kind for f in verdict.findings] == ["category:violence"]
    assert verdict.findings[0].score == pytest.approx(0.9)
    assert verdict.action == "block"


async def test_a_subcategory_counts_for_its_category(server: ScriptedOpenAIServer) -> None:
    guard = content_filter(server.url, categories=["hate"], action="warn")
    verdict = await check(guard, "I despise them")
    assert ([f.kind for f in verdict.findings], verdict.action) == (["category:hate"], "warn")


async def test_a_clean_text_passes(server: ScriptedOpenAIServer) -> None:
    guard = content_filter(server.url, categories=["violence", "hate", "self-harm"])
    verdict = await check(guard, "What a lovely day")
    assert (verdict.findings, verdict.action) == ([], None)
    assert len(server.moderation_requests) == 1


@pytest.mark.parametrize(("threshold", "hit"), [(0.25, True), (0.3, True), (0.5, False)])
async def test_the_threshold_on_unflagged_scores(
    server: ScriptedOpenAIServer, threshold: float, hit: bool
) -> None:
    guard = content_filter(server.url, categories=["harassment"], threshold=threshold)
    verdict = await check(guard, "that was rude")
    assert bool(verdict.findings) is hit


async def test_the_request_body_and_key_sent(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOD_KEY", "sk-mod-123")
    server.require_api_key = "sk-mod-123"
    guard = content_filter(
        server.url,
        categories=["violence"],
        moderation={"model": "omni-moderation-latest", "api_key_env": "MOD_KEY"},
    )
    await check(guard, "kill -9")
    assert server.moderation_requests == [{"input": "kill -9", "model": "omni-moderation-latest"}]
    assert server.moderation_headers[0]["authorization"] == "Bearer sk-mod-123"


async def test_no_model_no_key_sends_neither(server: ScriptedOpenAIServer) -> None:
    client = ModerationClient(ModerationSpec(endpoint=server.url))
    try:
        result = await client.moderate("hello")
    finally:
        await client.aclose()
    assert result.flagged is False
    assert server.moderation_requests == [{"input": "hello"}]
    assert "authorization" not in server.moderation_headers[0]


async def test_a_wrong_key_is_unavailable_and_names_the_variable(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOD_KEY", "sk-wrong")
    server.require_api_key = "sk-right"
    guard = content_filter(server.url, categories=["hate"], moderation={"api_key_env": "MOD_KEY"})
    with pytest.raises(GuardrailUnavailable, match="HTTP 401") as caught:
        await check(guard, "text")
    assert caught.value.details["retryable"] is False
    assert caught.value.hint is not None and "MOD_KEY" in caught.value.hint


async def test_a_server_error_is_unavailable_and_retryable(server: ScriptedOpenAIServer) -> None:
    server.fail_moderations(500, "moderation is down")
    guard = content_filter(server.url, categories=["violence"])
    with pytest.raises(GuardrailUnavailable, match="moderation is down") as caught:
        await check(guard, "kill")
    assert caught.value.http_status == 503
    assert caught.value.details == {
        "guardrail": "content_filter",
        "status": 500,
        "retryable": True,
    }
    # The failure was the server's: the next call is answered.
    verdict = await check(content_filter(server.url, categories=["violence"]), "kill")
    assert verdict.action == "block"
    assert len(server.moderation_requests) == 2


async def test_a_client_error_is_unavailable_and_not_retryable(
    server: ScriptedOpenAIServer,
) -> None:
    server.fail_moderations(400, "bad model")
    guard = content_filter(server.url, categories=["violence"])
    with pytest.raises(GuardrailUnavailable) as caught:
        await check(guard, "kill")
    assert caught.value.details["retryable"] is False


async def test_an_endpoint_that_is_not_moderation_is_unavailable(
    server: ScriptedOpenAIServer,
) -> None:
    # The server root has no /moderations route: Starlette's plain-text 404.
    guard = content_filter(server.url.removesuffix("/v1"), categories=["violence"])
    with pytest.raises(GuardrailUnavailable, match="HTTP 404"):
        await check(guard, "kill")


async def test_nothing_listening_is_unavailable_and_retryable() -> None:
    guard = content_filter(f"http://127.0.0.1:{free_port()}/v1", categories=["violence"])
    with pytest.raises(GuardrailUnavailable, match="cannot reach") as caught:
        await check(guard, "kill")
    assert caught.value.details["retryable"] is True


async def test_a_slow_endpoint_times_out_as_unavailable(server: ScriptedOpenAIServer) -> None:
    server.moderation_delay_s = 5.0
    guard = content_filter(server.url, categories=["violence"], moderation={"timeout": 0.2})
    with pytest.raises(GuardrailUnavailable, match="no answer") as caught:
        await check(guard, "kill")
    assert caught.value.details["retryable"] is True
