"""Test doubles shipped in the package: scripted providers and a loopback OpenAI server.

``ScriptedOpenAIServer`` is imported lazily so that ``import astromesh_ray.testing``
(done by every unit test) does not pull in uvicorn and starlette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from astromesh_ray.testing.scripted import ScriptedProvider

if TYPE_CHECKING:
    from astromesh_ray.testing.openai_server import ScriptedOpenAIServer

__all__ = ["ScriptedOpenAIServer", "ScriptedProvider"]


def __getattr__(name: str) -> Any:
    if name == "ScriptedOpenAIServer":
        from astromesh_ray.testing.openai_server import ScriptedOpenAIServer

        return ScriptedOpenAIServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
