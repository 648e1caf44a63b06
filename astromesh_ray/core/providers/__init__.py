"""LLM providers: the ``Provider`` protocol and a registry of backends by name."""

from astromesh_ray.core.providers.base import Provider, provider_class

__all__ = ["Provider", "provider_class"]
