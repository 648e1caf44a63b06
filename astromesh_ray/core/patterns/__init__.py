"""Orchestration patterns by YAML name."""

from __future__ import annotations

from astromesh_ray.core.patterns.base import Pattern
from astromesh_ray.core.patterns.react import ReActPattern
from astromesh_ray.errors import ConfigError

_PATTERNS: dict[str, type[ReActPattern]] = {"react": ReActPattern}


def pattern_for(name: str) -> Pattern:
    """The pattern for ``spec.orchestration.pattern``; a miss lists the valid names."""
    try:
        return _PATTERNS[name]()
    except KeyError:
        raise ConfigError(
            f"orchestration pattern {name!r} is not supported yet",
            hint="supported patterns: " + ", ".join(sorted(_PATTERNS)),
        ) from None


__all__ = ["Pattern", "ReActPattern", "pattern_for"]
