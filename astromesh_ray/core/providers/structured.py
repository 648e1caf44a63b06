"""How each backend is asked to constrain its answer to ``CompletionRequest.response_schema``.

One table of wire shapes, so no provider carries a second copy of one:

- OpenAI, and any OpenAI-compatible server (``openai``, ``openai_compat``, Ollama's
  ``/v1``, ``vllm``, in-cluster vLLM through ``ray.serve.llm``):
  ``response_format: {"type": "json_schema", "json_schema": {"name": "answer",
  "schema": ..., "strict": false}}`` (``openai_response_format``).  ``strict`` is
  off because OpenAI's strict mode refuses most schemas that are not written for it
  (every property required, ``additionalProperties: false``).
- vLLM takes the same ``response_format`` (since 0.6).  Not its old top-level
  ``guided_json`` extra parameter: vLLM 0.12 removed it, and vLLM ignores unknown
  body fields with a log line and a 200, so the answer would silently come back
  unconstrained.
- llama.cpp (llama-cpp-python's server): ``response_format: {"type": "json_object",
  "schema": ...}``, which it compiles to a GBNF grammar (``llamacpp_response_format``);
  its ``type`` is ``text`` or ``json_object`` only (``json_schema`` gets a 500).
- TGI: its own ``GrammarType``, ``{"type": "json", "value": ...}`` (``tgi_grammar``),
  as ``parameters.grammar`` on ``/generate`` and as ``response_format`` on its
  Messages API.  TGI refuses a JSON grammar without top-level ``properties`` (a
  422): such a schema is not sent (``tgi_grammar`` answers None), and the engine
  validates the answer instead.
- Ollama's ``/api/chat``: ``format: <schema>`` (the schema itself).
- ONNX Runtime: no constrained decoding (``OnnxProvider.native_structured_output``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "SCHEMA_NAME",
    "ResponseFormat",
    "llamacpp_response_format",
    "openai_response_format",
    "tgi_grammar",
]

# The name OpenAI's json_schema response format requires (^[a-zA-Z0-9_-]{1,64}$).
SCHEMA_NAME = "answer"

ResponseFormat = Callable[[Mapping[str, Any]], dict[str, Any] | None]
"""A schema as one OpenAI-wire server's ``response_format`` value; None: the server
cannot constrain decoding to this schema, send nothing."""


def openai_response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's structured outputs (also vLLM's, Ollama ``/v1``'s, ``ray.serve.llm``'s)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "schema": dict(schema), "strict": False},
    }


def llamacpp_response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """llama-cpp-python's JSON mode with a schema (turned into a GBNF grammar)."""
    return {"type": "json_object", "schema": dict(schema)}


def tgi_grammar(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """TGI's ``GrammarType`` (``/generate``'s ``parameters.grammar``, the Messages API's
    ``response_format``); None for a schema TGI refuses, one without top-level
    ``properties`` ("Grammar must have a 'properties' field")."""
    if not isinstance(schema.get("properties"), Mapping):
        return None
    return {"type": "json", "value": dict(schema)}
