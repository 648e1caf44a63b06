"""``spec.memory``: what is refused at load time, with the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_helpers import issues_of

from astromesh_ray.spec import load_document

HEAD = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: mem}
spec:
  model:
    primary: {provider: ollama, model: m}
"""


@pytest.mark.parametrize(
    ("body", "line", "path", "words"),
    [
        (
            "  memory:\n    conversational:\n      backend: sqlite\n      max_tokens: 100\n",
            10,
            "spec.memory.conversational.max_tokens",
            "token_budget only",
        ),
        (
            "  memory:\n    conversational:\n      backend: in_memory\n"
            "      connection: {url: 'redis://x'}\n",
            10,
            "spec.memory.conversational.connection",
            "has no connection",
        ),
        (
            "  memory:\n    semantic:\n      backend: faiss\n      embedding:\n"
            "        model: other\n",
            11,
            "spec.memory.semantic.embedding.model",
            "local embedder takes no model",
        ),
        (
            "  memory:\n    semantic:\n      backend: faiss\n      embedding:\n"
            "        provider: ollama\n        model: nomic\n        api_key_env: KEY\n",
            13,
            "spec.memory.semantic.embedding.api_key_env",
            "ollama embedder takes no api_key_env",
        ),
        (
            "  memory:\n    semantic:\n      backend: faiss\n      embedding:\n"
            "        provider: openai\n",
            10,
            "spec.memory.semantic.embedding.model",
            "needs a model name",
        ),
        (
            "  memory:\n    conversational:\n      backend: in_memory\n"
            "  deployment: {num_replicas: 2}\n",
            9,
            "spec.memory.conversational.backend",
            "lives in one replica",
        ),
        (
            "  memory:\n    conversational:\n      backend: mongodb\n",
            9,
            "spec.memory.conversational.backend",
            "redis",
        ),
        (
            "  memory:\n    semantic:\n      backend: faiss\n      collection: 'bad name'\n",
            10,
            "spec.memory.semantic.collection",
            "pattern",
        ),
    ],
)
def test_memory_mistakes_name_file_line_and_field(
    tmp_path: Path, body: str, line: int, path: str, words: str
) -> None:
    file = tmp_path / "mem.agent.yaml"
    file.write_text(HEAD + body)
    issues = issues_of(lambda: load_document(file))
    assert [(i["line"], i["path"]) for i in issues] == [(line, path)], issues
    assert words in issues[0]["message"]
    assert issues[0]["file"] == str(file)
