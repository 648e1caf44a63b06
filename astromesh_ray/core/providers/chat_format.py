"""Prompts and tool calls for backends that generate raw text (TGI ``/generate``,
ONNX Runtime): our messages and tools become one prompt through a chat template,
and tool calls are parsed back out of the generated text.

The default template is ChatML with Hermes-style tools, which most instruct models
of the Qwen / Hermes / SmolLM families are trained on: the tools are listed in the
system turn as JSON, and the model answers a call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.  A model card's own
Jinja template (``tokenizer_config.json``'s ``chat_template``) can replace it; it is
rendered in a sandbox with the variables Hugging Face templates expect.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from astromesh_ray.core.messages import Message, ToolCall, ToolSchema
from astromesh_ray.errors import ConfigError, ProviderError

CHATML_TOOLS_TEMPLATE = """\
{%- set system = messages[0].content if messages and messages[0].role == 'system' else '' -%}
{%- if tools or system -%}
<|im_start|>system
{{ system }}
{%- if tools %}
{%- if system %}

{% endif -%}
You can call functions. Their signatures, as JSON Schema, are within <tools></tools>:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
To call one, answer with a JSON object inside <tool_call></tool_call> tags:
<tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>
{%- endif %}<|im_end|>
{% endif -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}
<|im_start|>user
{{ m.content }}<|im_end|>
{% elif m.role == 'assistant' -%}
<|im_start|>assistant
{{ m.content or '' }}
{%- for call in m.tool_calls %}
{%- set args = call.arguments | tojson %}
<tool_call>{"name": {{ call.name | tojson }}, "arguments": {{ args }}}</tool_call>
{%- endfor %}<|im_end|>
{% elif m.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

DEFAULT_STOP = ("<|im_end|>", "<|endoftext|>")

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


class ChatFormat:
    """Render messages and tools to a prompt; parse a completion back to a message."""

    def __init__(self, template: str | None = None, *, stop: tuple[str, ...] = DEFAULT_STOP):
        env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
        env.globals["raise_exception"] = _raise
        # Jinja's own tojson HTML-escapes quotes and brackets and sorts keys: a model
        # should read the JSON exactly as it is asked to write it.
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(template or CHATML_TOOLS_TEMPLATE)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"chat_template line {exc.lineno}: Jinja2 syntax error: {exc.message}"
            ) from None
        self.stop = stop

    def render(self, messages: list[Message], tools: list[ToolSchema]) -> str:
        """The prompt for ``messages``, ending where the assistant's answer starts."""
        wire_tools = [asdict(t) for t in tools]
        try:
            return self._template.render(
                messages=[_template_message(m) for m in messages],
                tools=wire_tools or None,
                add_generation_prompt=True,
                bos_token="",
                eos_token="",
            )
        except jinja2.TemplateError as exc:
            raise ProviderError(
                f"chat template failed to render: {exc}",
                hint="check the provider's chat_template option",
                retryable=False,
            ) from None

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """Split generated ``text`` into plain content and tool calls.

        A ``<tool_call>`` whose body is not a JSON object with a string ``name`` is
        left in the content: the model is then told nothing was called, rather than
        having a half-parsed call executed.
        """
        for marker in self.stop:
            text = text.split(marker, 1)[0]
        calls: list[ToolCall] = []
        kept: list[str] = []
        last = 0
        for match in _TOOL_CALL.finditer(text):
            call = _decode_call(match.group(1), len(calls))
            if call is None:
                continue
            calls.append(call)
            kept.append(text[last : match.start()])
            last = match.end()
        kept.append(text[last:])
        content = "".join(kept).strip()
        return (content or None), calls


def _decode_call(body: str, index: int) -> ToolCall | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(id=f"call_{index}", name=data["name"], arguments=arguments)


def _template_message(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": message.content or "",
        "tool_calls": [asdict(c) for c in message.tool_calls],
        "tool_call_id": message.tool_call_id,
        "name": message.name,
    }
