"""What the memory unit tests share: a factory on a temporary data directory,
agents with a memory block, one turn, and a deterministic embedder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.memory.factory import MemoryDefaults, MemoryFactory
from astromesh_ray.core.messages import Message
from astromesh_ray.spec import AgentSpec
from tests.unit.core.engine_helpers import agent_yaml, load_agents


def factory(tmp_path: Path) -> MemoryFactory:
    return MemoryFactory(MemoryDefaults(data_dir=str(tmp_path / "data")))


def agent_with(tmp_path: Path, memory: dict[str, Any], **spec: Any) -> AgentSpec:
    doc = agent_yaml("mem", memory=memory, **spec)
    return load_agents(tmp_path, doc)["mem"]


async def turn(agents: LocalAgents, query: str, session: str | None = "s1") -> Any:
    runtime = await agents.runtime("mem")
    return await runtime.run(RunRequest(query=query, session_id=session))


def roles_and_texts(messages: Sequence[Message]) -> list[tuple[str, str | None]]:
    return [(m.role, m.content) for m in messages]


class WordsEmbedder:
    """A deterministic bag-of-words embedder (logic tests only; the real ones are
    tested against their servers and the real model)."""

    name = "words"
    DIM = 64

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import hashlib
        import math

        out = []
        for text in texts:
            vector = [0.0] * self.DIM
            for word in text.lower().replace(".", " ").replace("?", " ").split():
                digest = hashlib.sha256(word.encode()).digest()
                vector[digest[0] % self.DIM] += 1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            out.append([v / norm for v in vector])
        return out

    async def aclose(self) -> None:
        pass


class WordsFactory(MemoryFactory):
    def make_embedder(self, kind: str, kwargs: Any) -> Any:
        return WordsEmbedder()
