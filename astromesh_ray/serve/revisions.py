"""Revisions: what each application of a Serve config file binds, as a short hash.

The builders load the configuration themselves (``serve/builders.py``), so the
``args`` of an application in a Serve config file (``astromesh deploy-config``) do
not change when a YAML file's content does, and ``serve deploy`` redeploys an
application only when its entry in the file changes.  ``deploy-config`` therefore
writes each application's revision into its ``args``: a hash of exactly what its
builder loads and binds, so that editing one agent's YAML changes that agent's
application (and the gateway's, when what the gateway lists of it changes) and no
other, and ``serve deploy`` rolls just those while the others keep serving.

The builder computes the revision again from what it is about to bind and refuses a
stale config (``check_revision``): a file generated before the YAML changed would
otherwise deploy the new YAML under the old revision, and the next regeneration
would not roll anything.

A revision does not depend on where the configuration lives: the embedded stores'
directory (``MemoryDefaults.data_dir``, absolute once loaded) is hashed relative to
the configuration directory, so a file generated in a checkout is current in a
container that has the same configuration at another path.

Imports no Ray: the values hashed are specs and plain data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import date
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from astromesh_ray.core.memory.factory import MemoryDefaults
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import DeploymentSpec, ModelEndpoint
from astromesh_ray.spec.memory import EmbeddingSpec

__all__ = [
    "REVISION_CHARS",
    "Binding",
    "bound_revision",
    "check_revision",
    "embedder_revision",
    "provider_revision",
    "revision",
]

# Hex digits kept of the sha256: 64 bits, no collision between two revisions of
# one application in practice.
REVISION_CHARS = 16
# Hashed first: a change of what revisions cover changes every revision once.
_FORMAT = "astromesh-revision/1"


def revision(kind: str, *parts: object, base: Path | None = None) -> str:
    """The revision of an application of builder ``kind`` that binds ``parts``:
    pydantic models, dataclasses, mappings, sequences and scalars, hashed by content
    (model and dataclass names included, mapping keys sorted).  ``base``: the
    directory a bound ``MemoryDefaults.data_dir`` is made relative to."""
    canonical = [_FORMAT, kind, [_plain(part, base) for part in parts]]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:REVISION_CHARS]


@dataclasses.dataclass(frozen=True)
class Binding:
    """What a builder binds into its deployment (``.bind(*args, **kwargs)``) and the
    YAML ``deployment`` block its Serve options come from, when that is not in
    ``args`` already: the builder binds it, its revision hashes it, so the two cannot
    drift apart."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    deployment: DeploymentSpec | None = None


def bound_revision(kind: str, binding: Binding, *, base: Path | None) -> str:
    """The revision of an application of builder ``kind`` binding ``binding``: an
    agent's (its document with its ``deployment`` block, the provider entries it
    names, routing, memory defaults, RAG pipelines, ...) or the gateway's (its agent
    listings, providers, channels, telemetry, auth, ... and runtime.yaml
    ``spec.gateway``).  ``base``: the configuration directory (``LoadedConfig.root``)."""
    return revision(kind, binding.args, binding.kwargs, binding.deployment, base=base)


def provider_revision(endpoint: ModelEndpoint) -> str:
    """A provider application's revision: its endpoint (model, options, deployment),
    all that ``provider_app`` builds from."""
    return revision("provider_app", endpoint)


def embedder_revision(spec: EmbeddingSpec) -> str:
    """An embedder application's revision: its spec (model, batch, deployment), all
    that ``embedder_app`` builds from."""
    return revision("embedder_app", spec)


def check_revision(
    app: str,
    given: str | None,
    current: str,
    *,
    config_dir: str | None = None,
    agents_dir: str | None = None,
) -> None:
    """Refuse to build application ``app`` from a stale Serve config: one whose
    ``revision`` (``given``; None: the config has none, nothing to check) is not the
    ``current`` one of the configuration loaded now."""
    if given is None or given == current:
        return
    command = "astromesh deploy-config"
    if config_dir is not None:
        command += f" --config {config_dir}"
    if agents_dir is not None:
        command += f" --agents {agents_dir}"
    raise ConfigError(
        f"application {app}: stale Serve config: its revision is {given}, but the "
        f"configuration loaded here is revision {current} (its YAML changed after the "
        "file was generated, or this is not the configuration it was generated from)",
        hint=f"regenerate the file ({command} > FILE) and serve deploy FILE",
        app=app,
        revision=given,
        current=current,
    )


def _plain(value: Any, base: Path | None) -> Any:
    # JSON data, the same for equal values wherever the configuration lives.  Fields
    # left at their default are left out, so a release adding an optional field
    # leaves every revision as it was; each model and dataclass is tagged with its
    # class, so two variants of a union never read the same.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, MemoryDefaults):
        value = dataclasses.replace(value, data_dir=_relative(value.data_dir, base))
    if isinstance(value, BaseModel):
        # Private attributes are left out: an agent's source file is where it lives.
        found = {
            name: _plain(getattr(value, name), base)
            for name, info in type(value).model_fields.items()
            if info.is_required() or getattr(value, name) != _model_default(info)
        }
        found.update({str(k): _plain(v, base) for k, v in (value.__pydantic_extra__ or {}).items()})
        return {"model": type(value).__qualname__, "fields": found}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found = {
            f.name: _plain(getattr(value, f.name), base)
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != _dataclass_default(f)
        }
        return {"dataclass": type(value).__qualname__, "fields": found}
    if isinstance(value, Enum):
        return _plain(value.value, base)
    if isinstance(value, Mapping):
        return {str(key): _plain(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, base) for item in value]
    if isinstance(value, (set, frozenset)):
        items = [_plain(item, base) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"a bound {type(value).__qualname__} has no content form for a revision")


_NO_DEFAULT = object()


def _model_default(info: FieldInfo) -> Any:
    if info.default_factory is None:
        return info.default
    if info.default_factory_takes_validated_data:
        return _NO_DEFAULT  # depends on the other fields: always hashed
    return info.get_default(call_default_factory=True)


def _dataclass_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def _relative(path: str, base: Path | None) -> str:
    # A path under the configuration directory (or, with none, the working
    # directory, as LoadedConfig.data_dir resolves it) by its relative form.
    anchor = Path(base if base is not None else Path.cwd()).resolve()
    try:
        return Path(path).relative_to(anchor).as_posix() or "."
    except ValueError:
        return os.path.normpath(path)
