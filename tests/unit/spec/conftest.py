"""Fixtures for the spec tests."""

from spec_helpers import write

__all__ = ["write"]
