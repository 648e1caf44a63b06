"""``text_summarize``: a summary written by the agent's own model.

The model is the run's routed model of role ``summarizer`` when the agent has one,
else of its first role (``ToolContext.models``), so the summary goes through the
same router, breakers and retries as the agent's other calls, and its tokens are
reported in ``ToolResult.usage`` so the run counts them.  As in the original
Astromesh, a text shorter than ``min_chars`` is returned as it is (no model call).
"""

from __future__ import annotations

from typing import Any

import pydantic

from astromesh_ray.core.messages import CompletionRequest, Message
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.builtins.schema_tool import SchemaTool, ToolConfig, parse_config
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.errors import ProviderError, ToolError
from astromesh_ray.spec.tools import BuiltinToolSpec

SUMMARIZER_ROLE = "summarizer"

SYSTEM = (
    "You summarize text. Write a faithful summary of about {words} words: keep the "
    "facts, names, numbers and decisions, add nothing that is not in the text. Answer "
    "with the summary only."
)


class SummarizeConfig(ToolConfig):
    """``config`` of ``text_summarize``."""

    role: str | None = pydantic.Field(
        default=None,
        description="Model role to summarize with (default: summarizer if the agent has "
        "it, else its first role).",
    )
    min_chars: int = pydantic.Field(
        default=500, ge=0, description="Shorter texts are returned unchanged."
    )


class TextSummarizeTool(SchemaTool):
    """Summarize ``text`` in about ``max_length`` words."""

    def __init__(self, config: SummarizeConfig) -> None:
        super().__init__(
            "text_summarize",
            "Summarize long text using the agent's language model.",
            {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "The text to summarize."},
                    "max_length": {
                        "type": "integer",
                        "minimum": 1,
                        "default": 200,
                        "description": "About how many words the summary may have.",
                    },
                },
                "required": ["text"],
                "additionalProperties": False,
            },
        )
        self.config = config

    def _model(self, ctx: ToolContext) -> Provider:
        models = ctx.models
        role = self.config.role
        if role is not None:
            if role not in models:
                raise ToolError(
                    f"text_summarize: the agent has no model role {role!r} (config role)",
                    hint="roles: " + (", ".join(models) or "(none)"),
                )
            return models[role]
        if SUMMARIZER_ROLE in models:
            return models[SUMMARIZER_ROLE]
        for model in models.values():
            return model
        raise ToolError("text_summarize: this run has no model to summarize with")

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        text: str = arguments["text"]
        words: int = arguments["max_length"]
        if len(text) < self.config.min_chars:
            return ToolResult(content=text, data={"summary": text, "was_summarized": False})
        model = self._model(ctx)
        request = CompletionRequest(
            messages=[
                Message(role="system", content=SYSTEM.format(words=words)),
                Message(role="user", content=text),
            ],
            trace_parent=ctx.trace_parent,
        )
        try:
            completion = await model.complete(request)
        except ProviderError as exc:
            raise ToolError(f"text_summarize: the model failed: {exc.message}") from None
        summary = (completion.message.content or "").strip()
        if not summary:
            # A result, not a raise: the tokens were spent and must be counted.
            return ToolResult(
                content="text_summarize: the model returned an empty summary",
                is_error=True,
                usage=completion.usage,
            )
        return ToolResult(
            content=summary,
            data={"summary": summary, "was_summarized": True},
            usage=completion.usage,
        )


def text_summarize(spec: BuiltinToolSpec, env: ToolEnv) -> TextSummarizeTool:
    """The ``text_summarize`` built-in."""
    return TextSummarizeTool(parse_config(spec, SummarizeConfig))
