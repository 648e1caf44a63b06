"""The content filter: patterns (spans, redaction of several and overlapping
matches, block, warn), the look-ahead computed from the regexes, categories by a
moderation result (names, subcategories, threshold) and by the LLM judge through
the scripted model (its request, usage, fenced answers), and every failure to
judge is GuardrailUnavailable."""

from __future__ import annotations

from typing import Any

import pytest

from astromesh_ray.core.context import TurnState
from astromesh_ray.core.guardrails.base import WHOLE_TEXT, Guardrail, Verdict
from astromesh_ray.core.guardrails.content import (
    FILTERED,
    JUDGE_PROMPT,
    PATTERN_LOOKAHEAD_CAP,
    ContentFilter,
    pattern_reach,
)
from astromesh_ray.core.guardrails.moderation import ModerationResult, parse_moderation
from astromesh_ray.core.messages import CompletionRequest, Usage
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.trace import Trace, new_trace_id
from astromesh_ray.errors import ConfigError, GuardrailUnavailable, ProviderError
from astromesh_ray.spec.guardrails import ContentFilterSpec
from astromesh_ray.testing import ScriptedProvider
from astromesh_ray.testing.contexts import bare_context, bare_state


def spec(**fields: Any) -> ContentFilterSpec:
    return ContentFilterSpec.model_validate({"type": "content_filter", **fields})


async def check(
    guard: ContentFilter, text: str, judge: Provider | None = None, state: TurnState | None = None
) -> Verdict:
    ctx = bare_context({"judge": judge} if judge is not None else None)
    return await guard.check(text, ctx, state or bare_state(), "output")


# -- patterns -------------------------------------------------------------------------


async def test_blocked_patterns_block_with_spans_and_never_the_matched_text() -> None:
    guard = ContentFilter(spec(blocked_patterns=[r"password\s*=\s*\S+", r"secret"]))
    assert isinstance(guard, Guardrail)
    assert guard.name == "content_filter"
    text = "my PASSWORD = hunter2 is a Secret"
    verdict = await check(guard, text)
    assert verdict.action == "block"
    assert verdict.text == text
    assert [(f.kind, f.start, f.end) for f in verdict.findings] == [
        ("pattern:0", 3, 21),
        ("pattern:1", 27, 33),
    ]
    assert verdict.detail == "1 pattern:0, 1 pattern:1"
    assert "hunter2" not in verdict.detail


async def test_redact_replaces_every_match_at_its_offsets() -> None:
    guard = ContentFilter(spec(blocked_patterns=[r"\bcat\b", r"dog"], action="redact"))
    text = "Cat, dog and cat; hotdog. Catalog"
    verdict = await check(guard, text)
    assert verdict.action == "redact"
    assert verdict.text == f"{FILTERED}, {FILTERED} and {FILTERED}; hot{FILTERED}. Catalog"
    spans = sorted((f.start, f.end) for f in verdict.findings)
    assert spans == [(0, 3), (5, 8), (13, 16), (21, 24)]
    assert all(text[s:e].lower() in ("cat", "dog") for s, e in spans)


async def test_redact_covers_the_union_of_overlapping_matches() -> None:
    guard = ContentFilter(spec(blocked_patterns=[r"abcd", r"cdef"], action="redact"))
    verdict = await check(guard, "xxabcdefyy")
    assert verdict.text == f"xx{FILTERED}yy"  # no "ef" left behind
    assert len(verdict.findings) == 2


@pytest.mark.parametrize("action", ["warn", "log"])
async def test_warn_and_log_record_and_change_nothing(action: str) -> None:
    guard = ContentFilter(spec(blocked_patterns=["bad"], action=action))
    verdict = await check(guard, "a BAD word")
    assert (verdict.action, verdict.text) == ("warn", "a BAD word")
    assert [(f.start, f.end) for f in verdict.findings] == [(2, 5)]


async def test_no_match_no_action_and_empty_matches_ignored() -> None:
    # Zero-width patterns the spec lets through (they never match the empty text)
    # still match nothing but empty spans here: no finding, nothing redacted.
    guard = ContentFilter(spec(blocked_patterns=["forbidden", r"\b", "(?=x)"], action="redact"))
    verdict = await check(guard, "all fine here, x")
    assert (verdict.findings, verdict.action, verdict.text) == ([], None, "all fine here, x")


def test_an_invalid_pattern_is_a_config_error_naming_it() -> None:
    # The spec refuses it at load time; a spec built without validation still fails here.
    unchecked = ContentFilterSpec.model_construct(
        type="content_filter", blocked_patterns=["ok", "(unclosed"]
    )
    with pytest.raises(ConfigError, match=r"blocked_patterns\[1\]"):
        ContentFilter(unchecked)


@pytest.mark.parametrize(
    ("pattern", "reach"),
    [
        ("abc", 3),
        (r"\d{3}-\d{4}", 8),
        (r"\bfoo\b", 5),
        (r"cat|horse", 5),
        (r"colou?r", 6),
        (r"pass(?=word)", 8),
        (r"(?<=my )key", 3),
        (r"ab$", 3),
        (r"[a-z]{2,10}", 10),
        (r"\d+", PATTERN_LOOKAHEAD_CAP),
        (r"x.*y", PATTERN_LOOKAHEAD_CAP),
        (r"a{300}", PATTERN_LOOKAHEAD_CAP),
        (r"(a)b\1", PATTERN_LOOKAHEAD_CAP),
    ],
)
def test_pattern_reach(pattern: str, reach: int) -> None:
    assert pattern_reach(pattern) == reach


def test_lookahead_is_the_longest_reach_or_the_whole_text_with_categories() -> None:
    assert ContentFilter(spec(blocked_patterns=["abc", r"\d{3}-\d{4}"])).lookahead == 8
    assert PATTERN_LOOKAHEAD_CAP == 256
    assert ContentFilter(spec(blocked_patterns=[r"\w+"])).lookahead == 256
    with_categories = ContentFilter(spec(blocked_patterns=["abc"], categories=["hate"]))
    assert with_categories.lookahead is WHOLE_TEXT


# -- categories by moderation ---------------------------------------------------------


class FakeModeration:
    """Answers one fixed result; records the texts it was asked about."""

    def __init__(self, result: ModerationResult | BaseException) -> None:
        self.result = result
        self.texts: list[str] = []

    async def moderate(self, text: str) -> ModerationResult:
        self.texts.append(text)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result

    async def aclose(self) -> None:
        return None


def moderated(**scores: float) -> ModerationResult:
    names = {k.replace("__", "/").replace("_", "-"): v for k, v in scores.items()}
    return ModerationResult(
        flagged=any(v >= 0.5 for v in names.values()),
        categories={k: v >= 0.5 for k, v in names.items()},
        scores=names,
    )


def moderation_filter(
    result: ModerationResult | BaseException, **fields: Any
) -> tuple[ContentFilter, FakeModeration]:
    fake = FakeModeration(result)
    guard = ContentFilter(spec(**fields), moderation=fake)  # type: ignore[arg-type]
    return guard, fake


async def test_a_category_covers_its_subcategories() -> None:
    result = moderated(hate=0.2, hate__threatening=0.7, violence=0.01)
    guard, fake = moderation_filter(result, categories=["hate", "violence"])
    verdict = await check(guard, "some text")
    assert fake.texts == ["some text"]
    assert [(f.kind, f.whole) for f in verdict.findings] == [("category:hate", True)]
    assert verdict.findings[0].score == pytest.approx(0.7)
    assert verdict.action == "block"


async def test_categories_compare_case_and_underscore_insensitively() -> None:
    guard, _ = moderation_filter(moderated(self_harm__intent=0.8), categories=["Self_Harm"])
    assert [f.kind for f in (await check(guard, "t")).findings] == ["category:Self_Harm"]


@pytest.mark.parametrize(("threshold", "hit"), [(0.3, True), (0.35, True), (0.36, False)])
async def test_a_score_at_the_threshold_hits_though_not_flagged(
    threshold: float, hit: bool
) -> None:
    result = ModerationResult(False, {"violence": False}, {"violence": 0.35})
    guard, _ = moderation_filter(result, categories=["violence"], threshold=threshold)
    assert bool((await check(guard, "t")).findings) is hit


async def test_a_flag_hits_whatever_the_score() -> None:
    result = ModerationResult(True, {"violence": True}, {"violence": 0.1})
    guard, _ = moderation_filter(result, categories=["violence"], threshold=0.9, action="warn")
    verdict = await check(guard, "t")
    assert (verdict.action, [f.kind for f in verdict.findings]) == ("warn", ["category:violence"])


async def test_a_category_the_endpoint_does_not_report_is_unavailable() -> None:
    guard, _ = moderation_filter(moderated(hate=0.1), categories=["violance"])
    with pytest.raises(GuardrailUnavailable, match="violance") as caught:
        await check(guard, "t")
    assert caught.value.details == {"guardrail": "content_filter", "retryable": False}


async def test_a_moderation_failure_propagates_and_empty_text_is_not_sent() -> None:
    down = GuardrailUnavailable("down", guardrail="content_filter", retryable=True)
    guard, fake = moderation_filter(down, categories=["hate"])
    assert (await check(guard, "   ")).findings == []
    assert fake.texts == []
    with pytest.raises(GuardrailUnavailable):
        await check(guard, "text")


async def test_a_blocking_pattern_spares_the_category_call() -> None:
    guard, fake = moderation_filter(
        moderated(hate=0.9), blocked_patterns=["x"], categories=["hate"]
    )
    verdict = await check(guard, "x")
    assert [f.kind for f in verdict.findings] == ["pattern:0"]
    assert fake.texts == []


async def test_warn_records_patterns_and_categories_together() -> None:
    guard, _ = moderation_filter(
        moderated(hate=0.9), blocked_patterns=["x"], categories=["hate"], action="warn"
    )
    verdict = await check(guard, "x marks")
    assert [f.kind for f in verdict.findings] == ["pattern:0", "category:hate"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"results": []},
        {"results": [{"categories": {"hate": "yes"}, "category_scores": {}}]},
        {"results": [{"categories": {"hate": True}, "category_scores": {"hate": "high"}}]},
        {"results": [{"categories": {"hate": True}, "category_scores": {"hate": float("nan")}}]},
        {"results": [{"category_scores": {"hate": 0.1}}]},
        [1, 2],
    ],
)
def test_parse_moderation_refuses_what_is_not_a_result(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_moderation(body)


def test_parse_moderation_reads_openai_names() -> None:
    result = parse_moderation(
        {
            "id": "modr-1",
            "model": "omni-moderation-latest",
            "results": [
                {
                    "flagged": True,
                    "categories": {"self-harm/intent": True, "Hate": False},
                    "category_scores": {"self-harm/intent": 0.9, "Hate": 0.01},
                }
            ],
        }
    )
    assert result.flagged is True
    assert result.categories == {"self-harm/intent": True, "hate": False}
    assert result.scores == {"self-harm/intent": 0.9, "hate": 0.01}


# -- categories by the judge ----------------------------------------------------------


def judge_answer(answer: str, seen: list[CompletionRequest]) -> Any:
    def step(request: CompletionRequest) -> str:
        seen.append(request)
        return answer

    return step


async def test_the_judge_is_asked_with_the_prompt_schema_and_temperature_zero() -> None:
    seen: list[CompletionRequest] = []
    judge = ScriptedProvider([judge_answer('{"categories": ["violence"]}', seen)])
    guard = ContentFilter(spec(categories=["hate", "violence"]))
    state = TurnState(trace=Trace(new_trace_id()), usage=Usage(input_tokens=10, calls=1))
    verdict = await check(guard, "I will hurt you", judge, state)
    assert [(f.kind, f.whole) for f in verdict.findings] == [("category:violence", True)]
    assert verdict.action == "block"
    (request,) = seen
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[0].content == JUDGE_PROMPT.format(categories="hate, violence")
    assert request.messages[1].content == "I will hurt you"
    assert request.parameters == {"temperature": 0}
    assert request.response_schema is not None
    items = request.response_schema["properties"]["categories"]["items"]
    assert items["enum"] == ["hate", "violence"]
    # The judge's usage joins the turn's: 10 + its prompt words, one more call.
    prompt_words = sum(len((m.content or "").split()) for m in request.messages)
    assert state.usage.calls == 2
    assert state.usage.input_tokens == 10 + prompt_words
    assert state.usage.output_tokens == 2


def test_the_judge_prompt_asks_for_json_only() -> None:
    prompt = JUDGE_PROMPT.format(categories="hate, violence")
    assert "hate, violence" in prompt
    assert "JSON only" in prompt
    assert '{"categories": []}' in prompt


@pytest.mark.parametrize(
    ("answer", "kinds"),
    [
        ('{"categories": []}', []),
        ('```json\n{"categories": ["HATE"]}\n```', ["category:hate"]),
        ('  {"categories": ["hate", "unknown"]}  ', ["category:hate"]),
    ],
)
async def test_judge_answers_are_parsed(answer: str, kinds: list[str]) -> None:
    guard = ContentFilter(spec(categories=["hate"], action="warn"))
    verdict = await check(guard, "text", ScriptedProvider([answer]))
    assert [f.kind for f in verdict.findings] == kinds
    assert verdict.action == ("warn" if kinds else None)


@pytest.mark.parametrize(
    "answer", ["I think it is hateful", '{"categories": "hate"}', '["hate"]', ""]
)
async def test_an_unparsable_judgement_is_unavailable(answer: str) -> None:
    guard = ContentFilter(spec(categories=["hate"]))
    with pytest.raises(GuardrailUnavailable) as caught:
        await check(guard, "text", ScriptedProvider([answer]))
    assert caught.value.details["guardrail"] == "content_filter"


@pytest.mark.parametrize("retryable", [True, False])
async def test_a_judge_failure_is_unavailable(retryable: bool) -> None:
    error = ProviderError("boom", provider="scripted", status=500, retryable=retryable)
    guard = ContentFilter(spec(categories=["hate"]))
    with pytest.raises(GuardrailUnavailable) as caught:
        await check(guard, "text", ScriptedProvider([error]))
    assert caught.value.details == {"guardrail": "content_filter", "retryable": retryable}


async def test_the_judge_role_can_be_named() -> None:
    guard = ContentFilter(spec(categories=["hate"]), judge_role="moderator")
    ctx = bare_context({"moderator": ScriptedProvider(['{"categories": ["hate"]}'])})
    verdict = await guard.check("t", ctx, bare_state(), "input")
    assert verdict.action == "block"


def test_a_moderation_spec_gets_a_moderation_client() -> None:
    guard = ContentFilter(
        spec(categories=["hate"], moderation={"endpoint": "http://127.0.0.1:9/v1/"})
    )
    assert guard.moderation is not None
    assert "'moderation'" in repr(guard)
