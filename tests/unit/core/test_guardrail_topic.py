"""The topic filter: keywords as whole words, embedding similarity against the
threshold (every labelled case of tests/data/topic_cases.jsonl under the real
MiniLM at the default threshold), block vs warn, topics embedded once, and an
embedder that fails is GuardrailUnavailable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.guardrails.base import WHOLE_TEXT, Guardrail
from astromesh_ray.core.guardrails.topic import OFF_TOPIC, TopicFilter
from astromesh_ray.core.memory.embedders.minilm import MiniLMEmbedder
from astromesh_ray.errors import GuardrailUnavailable, MemoryUnavailable
from astromesh_ray.spec.guardrails import TopicFilterSpec
from astromesh_ray.testing.contexts import bare_context, bare_state

CASES_FILE = Path(__file__).resolve().parents[2] / "data" / "topic_cases.jsonl"
CASES: list[dict[str, Any]] = [json.loads(line) for line in CASES_FILE.read_text().splitlines()]


async def check(guard: TopicFilter, text: str) -> Any:
    return await guard.check(text, bare_context(), bare_state(), "input")


def spec(**fields: Any) -> TopicFilterSpec:
    return TopicFilterSpec.model_validate({"type": "topic_filter", **fields})


class FakeEmbedder:
    """Vectors from a table (unit vectors given by the test); counts its calls."""

    name = "fake"

    def __init__(self, table: dict[str, list[float]], fail: BaseException | None = None) -> None:
        self.table = table
        self.fail = fail
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        await asyncio.sleep(0)  # let concurrent callers interleave
        if self.fail is not None:
            raise self.fail
        return [self.table[t] for t in texts]

    async def aclose(self) -> None:
        return None


# -- keywords -------------------------------------------------------------------------


async def test_is_a_guardrail_that_needs_the_whole_text() -> None:
    guard = TopicFilter(spec(blocked_topics=["politics"], method="keywords"), None)
    assert isinstance(guard, Guardrail)
    assert guard.name == "topic_filter"
    assert guard.lookahead is WHOLE_TEXT
    assert guard.method == "keywords"


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("I need MEDICAL ADVICE now", True),
        ("any medical-advice, please?", True),
        ("medical\n advice", True),
        ("biomedical advice", False),
        ("medical advices", False),
        ("advice that is medical", False),
    ],
)
async def test_keywords_match_a_phrase_as_whole_words(text: str, hit: bool) -> None:
    guard = TopicFilter(spec(blocked_topics=["medical advice"], method="keywords"), None)
    verdict = await check(guard, text)
    assert [f.kind for f in verdict.findings] == (["topic:medical advice"] if hit else [])
    assert verdict.action == ("block" if hit else None)
    assert verdict.refusal == ("I can't help with that topic." if hit else None)
    assert verdict.text == text


async def test_no_embedder_falls_back_to_keywords() -> None:
    guard = TopicFilter(spec(blocked_topics=["gambling"], refusal="No bets."), None)
    assert guard.method == "keywords"
    verdict = await check(guard, "Tips for Gambling online?")
    assert (verdict.action, verdict.refusal) == ("block", "No bets.")
    assert verdict.detail == "1 topic:gambling"


async def test_keywords_with_allowed_topics_find_off_topic_text() -> None:
    guard = TopicFilter(spec(allowed_topics=["billing", "refund"], method="keywords"), None)
    assert (await check(guard, "Where is my refund?")).findings == []
    verdict = await check(guard, "Tell me a joke")
    assert [f.kind for f in verdict.findings] == [OFF_TOPIC]
    assert verdict.action == "block"


@pytest.mark.parametrize("action", ["warn", "log"])
async def test_warn_and_log_record_without_refusing(action: str) -> None:
    guard = TopicFilter(spec(blocked_topics=["politics"], method="keywords", action=action), None)
    assert guard.action == "warn"
    verdict = await check(guard, "so, politics")
    assert (verdict.action, verdict.refusal, verdict.text) == ("warn", None, "so, politics")
    assert [f.kind for f in verdict.findings] == ["topic:politics"]


async def test_keywords_method_ignores_an_embedder() -> None:
    embedder = FakeEmbedder({})
    guard = TopicFilter(spec(blocked_topics=["politics"], method="keywords"), embedder)
    assert (await check(guard, "politics")).action == "block"
    assert embedder.calls == []


# -- embedding, with a table of vectors -----------------------------------------------

TABLE = {
    "politics": [1.0, 0.0],
    "cooking": [0.0, 1.0],
    "at threshold": [0.45, (1 - 0.45**2) ** 0.5],
    "just below": [0.4499, (1 - 0.4499**2) ** 0.5],
    "far": [-1.0, 0.0],
}


async def test_a_blocked_topic_hits_at_the_threshold_and_not_below() -> None:
    embedder = FakeEmbedder(TABLE)
    guard = TopicFilter(spec(blocked_topics=["politics"], threshold=0.45), embedder)
    assert guard.method == "embedding"
    hit = await check(guard, "at threshold")
    assert [f.kind for f in hit.findings] == ["topic:politics"]
    assert hit.findings[0].score == pytest.approx(0.45)
    assert (await check(guard, "just below")).findings == []


async def test_off_topic_when_the_best_allowed_similarity_is_below_the_threshold() -> None:
    embedder = FakeEmbedder(TABLE)
    guard = TopicFilter(spec(allowed_topics=["politics", "cooking"], threshold=0.45), embedder)
    assert (await check(guard, "at threshold")).findings == []
    verdict = await check(guard, "far")
    assert [f.kind for f in verdict.findings] == [OFF_TOPIC]
    assert verdict.findings[0].score == pytest.approx(0.0)  # best: cooking, orthogonal


async def test_topics_are_embedded_once_even_by_concurrent_first_checks() -> None:
    embedder = FakeEmbedder(TABLE)
    guard = TopicFilter(spec(blocked_topics=["politics", "cooking"]), embedder)
    await asyncio.gather(*(check(guard, "far") for _ in range(5)))
    topic_calls = [c for c in embedder.calls if c != ["far"]]
    assert topic_calls == [["politics", "cooking"]]
    assert embedder.calls.count(["far"]) == 5


async def test_empty_text_is_on_no_topic_and_embeds_nothing() -> None:
    embedder = FakeEmbedder(TABLE)
    guard = TopicFilter(spec(allowed_topics=["cooking"]), embedder)
    assert (await check(guard, "  \n")).findings == []
    assert embedder.calls == []


@pytest.mark.parametrize("retryable", [True, False])
async def test_an_embedder_failure_is_guardrail_unavailable(retryable: bool) -> None:
    failure = MemoryUnavailable("down", backend="fake", retryable=retryable)
    embedder = FakeEmbedder(TABLE, fail=failure)
    guard = TopicFilter(spec(blocked_topics=["politics"]), embedder)
    with pytest.raises(GuardrailUnavailable) as caught:
        await check(guard, "far")
    assert caught.value.details == {"guardrail": "topic_filter", "retryable": retryable}
    assert caught.value.http_status == 503
    # Nothing half-cached: once the embedder is back, the topics are embedded then.
    embedder.fail = None
    assert (await check(guard, "politics")).action == "block"
    assert embedder.calls[-2:] == [["politics"], ["politics"]]


# -- embedding, with the real MiniLM on the labelled cases ----------------------------

_filters: dict[tuple[str, tuple[str, ...]], TopicFilter] = {}


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_the_labelled_cases_cover_both_kinds_and_outcomes() -> None:
    assert len(CASES) >= 40
    seen = {(c["kind"], c["hit"]) for c in CASES}
    assert seen == {("blocked", True), ("blocked", False), ("allowed", True), ("allowed", False)}


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:40] for c in CASES])
async def test_labelled_case_at_the_default_threshold(
    case: dict[str, Any], minilm: MiniLMEmbedder
) -> None:
    key = (case["kind"], tuple(case["topics"]))
    guard = _filters.get(key)
    if guard is None:
        field = "blocked_topics" if case["kind"] == "blocked" else "allowed_topics"
        guard = _filters[key] = TopicFilter(spec(**{field: case["topics"]}), minilm)
    verdict = await check(guard, case["text"])
    scores = {f.kind: round(f.score, 3) for f in verdict.findings}
    assert bool(verdict.findings) is case["hit"], scores
    if case["hit"]:
        assert verdict.action == "block"
        if case["kind"] == "allowed":
            assert list(scores) == [OFF_TOPIC]
