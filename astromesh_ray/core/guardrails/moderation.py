"""``ModerationClient``: OpenAI's moderation API (``POST {endpoint}/moderations``),
the judge of ``content_filter`` categories when ``moderation:`` is configured.

The wire format: ``{"input": text, "model": model}`` (``model`` only when set),
answered by ``{"id", "model", "results": [{"flagged", "categories": {name: bool},
"category_scores": {name: float}}]}``.  OpenAI's category names are lowercase,
subcategories after a slash: ``hate``, ``hate/threatening``, ``self-harm``,
``self-harm/intent``, ``violence/graphic``...  Any OpenAI-compatible server
speaks it (OpenAI, LiteLLM, proxies in front of Llama Guard).

The API key follows ``OpenAIProvider``'s rule: ``OPENAI_API_KEY`` is only ever
sent to api.openai.com itself; any other endpoint gets ``Authorization: Bearer``
only when ``api_key_env`` names the variable (read at call time).  Whatever goes
wrong (unreachable, a timeout, an HTTP error, a body that is not a moderation
result) is ``GuardrailUnavailable``: a text is never let through unchecked.
Moderation is idempotent, so a connection the server dropped under us (a stale
keep-alive) is retried once on a fresh one.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from astromesh_ray.core.providers.http import ClientPool, api_key, post_json
from astromesh_ray.core.providers.openai_wire import error_text
from astromesh_ray.errors import GuardrailUnavailable
from astromesh_ray.spec.guardrails import ModerationSpec

__all__ = ["ModerationClient", "ModerationResult", "category_key", "parse_moderation"]

GUARDRAIL = "content_filter"
_OPENAI_HOST = "api.openai.com"


def category_key(name: str) -> str:
    """A category name as compared: lowercase, ``_`` and spaces read as ``-``
    (``Self_Harm`` is OpenAI's ``self-harm``)."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


@dataclass(frozen=True, slots=True)
class ModerationResult:
    """What the endpoint said of one text: ``flagged`` overall, and per category
    (names as ``category_key`` writes them) whether it is flagged and its score."""

    flagged: bool
    categories: Mapping[str, bool] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Every category the endpoint reported."""
        return sorted(set(self.categories) | set(self.scores))


def parse_moderation(data: Any) -> ModerationResult:
    """The first result of a moderation response; ``ValueError`` when ``data`` is
    not one (no ``results``, categories that are not booleans, scores that are not
    finite numbers)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("results"), list):
        raise ValueError("no results list")
    if not data["results"] or not isinstance(data["results"][0], Mapping):
        raise ValueError("an empty results list")
    result = data["results"][0]
    raw_categories = result.get("categories")
    raw_scores = result.get("category_scores", {})
    if not isinstance(raw_categories, Mapping) or not isinstance(raw_scores, Mapping):
        raise ValueError("categories and category_scores must be objects")
    categories: dict[str, bool] = {}
    for name, value in raw_categories.items():
        if not isinstance(value, bool):
            raise ValueError(f"category {name!r} is {value!r}, not a boolean")
        categories[category_key(str(name))] = value
    scores: dict[str, float] = {}
    for name, value in raw_scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"the score of {name!r} is {value!r}, not a number")
        if not math.isfinite(value):
            raise ValueError(f"the score of {name!r} is {value!r}")
        scores[category_key(str(name))] = float(value)
    flagged = result.get("flagged", any(categories.values()))
    if not isinstance(flagged, bool):
        raise ValueError(f"flagged is {flagged!r}, not a boolean")
    return ModerationResult(flagged, categories, scores)


class ModerationClient:
    """Moderation calls to ``spec.endpoint`` through one pooled HTTP client."""

    def __init__(self, spec: ModerationSpec) -> None:
        self.endpoint = spec.endpoint.rstrip("/")
        self.url = f"{self.endpoint}/moderations"
        self.model = spec.model
        self.timeout_s = spec.timeout_s
        is_openai = urlparse(self.endpoint).hostname == _OPENAI_HOST
        self.api_key_env = spec.api_key_env or ("OPENAI_API_KEY" if is_openai else None)
        self._key_required = is_openai
        self._pool = ClientPool()  # pickles without its live client

    def __repr__(self) -> str:
        return f"ModerationClient(url={self.url!r}, model={self.model!r})"

    async def moderate(self, text: str) -> ModerationResult:
        """What the endpoint says of ``text``."""
        body: dict[str, Any] = {"input": text}
        if self.model:
            body["model"] = self.model
        data = await post_json(
            self._pool,
            self.url,
            body,
            headers=self._headers(),
            timeout_s=self.timeout_s,
            what=f"{GUARDRAIL}: moderation",
            fail=functools.partial(GuardrailUnavailable, guardrail=GUARDRAIL),
            reach_hint=f"check network access to {self.endpoint}",
            error_text=error_text,
            api_key_env=self.api_key_env,
        )
        try:
            return parse_moderation(data)
        except ValueError as exc:
            raise GuardrailUnavailable(
                f"content_filter: {self.url} answered something that is not a "
                f"moderation result ({exc}): {json.dumps(data)[:200]!r}",
                hint=f"check that {self.endpoint} is an OpenAI-compatible API",
                guardrail=GUARDRAIL,
                retryable=False,
            ) from None

    async def aclose(self) -> None:
        """Close the pooled HTTP client (a later call opens a new one)."""
        await self._pool.aclose()

    def _headers(self) -> dict[str, str]:
        key = api_key(self.api_key_env)
        if key:
            return {"Authorization": f"Bearer {key}"}
        if self._key_required:
            var = self.api_key_env or "OPENAI_API_KEY"
            raise GuardrailUnavailable(
                f"content_filter: no API key for {self.endpoint}: ${var} is not set",
                hint=f"set {var}",
                guardrail=GUARDRAIL,
                retryable=False,
            )
        return {}
