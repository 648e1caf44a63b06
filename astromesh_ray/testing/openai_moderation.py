"""OpenAI's moderation format, as ``ScriptedOpenAIServer`` answers ``POST
/v1/moderations``: every category, scores from substring rules, flags at 0.5."""

from __future__ import annotations

from typing import Any

__all__ = ["MODERATION_CATEGORIES", "moderation_inputs", "moderation_result"]

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
"""The categories OpenAI's ``omni-moderation-latest`` reports for every input."""

# Scores of the moderation answers: a rule naming just a category scores it
# _RULE_SCORE; a category scored _FLAG_SCORE or more is flagged; one no rule names
# scores _BASE_SCORE (real models never answer exactly 0).
_RULE_SCORE = 0.9
_FLAG_SCORE = 0.5
_BASE_SCORE = 1e-4


def moderation_inputs(raw: Any) -> list[str] | None:
    """The texts of a moderation ``input``: a string, strings (one result each), or
    multimodal parts (one result, of their text parts); None when it is none of those."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(item, str) for item in raw):
        return list(raw)
    if all(isinstance(item, dict) and item.get("type") in ("text", "image_url") for item in raw):
        return [" ".join(str(item.get("text", "")) for item in raw if item["type"] == "text")]
    return None


def moderation_result(text: str, rules: dict[str, str | dict[str, float]]) -> dict[str, Any]:
    """One result of OpenAI's moderation format for ``text`` under ``rules``."""
    scores = dict.fromkeys(MODERATION_CATEGORIES, _BASE_SCORE)
    lowered = text.lower()
    for needle, named in rules.items():
        if needle.lower() in lowered:
            for category, score in (
                {named: _RULE_SCORE} if isinstance(named, str) else named
            ).items():
                scores[category] = max(scores.get(category, 0.0), float(score))
    flags = {category: score >= _FLAG_SCORE for category, score in scores.items()}
    return {
        "flagged": any(flags.values()),
        "categories": flags,
        "category_scores": scores,
        "category_applied_input_types": {category: ["text"] for category in scores},
    }
