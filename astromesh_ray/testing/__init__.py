"""Test doubles shipped in the package: scripted providers and a loopback OpenAI server.

``ScriptedOpenAIServer`` is imported lazily so that ``import astromesh_ray.testing``
(done by every unit test) does not pull in uvicorn and starlette.  The pytest plugin
``astromesh_ray.testing.pytest_plugin`` (list it in ``pytest_plugins``) fails any test
that leaves ``ScriptedProvider`` steps unconsumed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from astromesh_ray.testing.scripted import ScriptedProvider, ScriptedTracker, track_scripted

if TYPE_CHECKING:
    from astromesh_ray.testing.ollama_server import ScriptedOllamaServer
    from astromesh_ray.testing.openai_server import ScriptedOpenAIServer
    from astromesh_ray.testing.tgi_server import ScriptedTGIServer

__all__ = [
    "ScriptedOllamaServer",
    "ScriptedOpenAIServer",
    "ScriptedProvider",
    "ScriptedTGIServer",
    "ScriptedTracker",
    "track_scripted",
]


def __getattr__(name: str) -> Any:
    if name == "ScriptedOpenAIServer":
        from astromesh_ray.testing.openai_server import ScriptedOpenAIServer

        return ScriptedOpenAIServer
    if name == "ScriptedOllamaServer":
        from astromesh_ray.testing.ollama_server import ScriptedOllamaServer

        return ScriptedOllamaServer
    if name == "ScriptedTGIServer":
        from astromesh_ray.testing.tgi_server import ScriptedTGIServer

        return ScriptedTGIServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
