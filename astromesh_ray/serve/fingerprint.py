"""What is deployed, by content: a fingerprint per Serve application, and where the
fingerprints of the running applications are kept.

``fingerprint(app)`` hashes exactly what Serve would run: the bound deployment's
class, its init arguments (the specs a builder loaded and bound: an agent's
document, the provider entries it names, routing, memory defaults, ...) and its
options (replicas, resources, autoscaling).  The builders load the configuration
themselves (``serve/builders.py``), so an application's builder arguments do not
change when a file's content does; what they bind does.  Two builds of an
unchanged configuration have the same fingerprint; a changed prompt, provider
endpoint or replica count gives another.

Serve redeploys an application on every ``serve.run`` (each call gets a new
random version, restarting its replicas), so ``serve/reload.py`` runs only the
applications whose fingerprint differs from the deployed one.  The deployed ones
are recorded in one named, detached actor (``DeployedApps``), so that a separate
process (``astromesh apply``) sees what ``astromesh serve`` deployed.  A record
holds the application's creation time as Serve reports it
(``last_deployed_time_s``): an application deleted and created again by anything
else does not match its old record, and is deployed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from typing import Any

import ray
from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE

STORE_NAME = "astromesh-deployed-apps"
_OURS = "astromesh_ray."

_log = logging.getLogger(__name__)


class Unfingerprintable(TypeError):
    """A bound value with no stable content form: its application is always
    deployed again."""


def fingerprint(app: Application) -> str | None:
    """A hash of what ``app`` would run (the module docstring says what); None when
    a bound value has no stable form (then the application counts as changed)."""
    try:
        canonical = _application(app)
    except Unfingerprintable as exc:
        _log.info("astromesh: no fingerprint (always redeployed): %s", exc)
        return None
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _application(app: Application) -> dict[str, Any]:
    # Private attributes of Ray 2.60's Application / Deployment: what `build_app`
    # reads too.  A nested application (one bound into another) is hashed the same way.
    deployment = app._bound_deployment
    replica = deployment._replica_config
    found = {
        "deployment": deployment.name,
        "version": deployment.version,
        "code": _code(deployment.func_or_class),
        "config": canonical(deployment._deployment_config),
        "ray_actor_options": canonical(deployment.ray_actor_options),
        "placement": canonical(
            [
                getattr(replica, name, None)
                for name in (
                    "placement_group_bundles",
                    "placement_group_strategy",
                    "placement_group_bundle_label_selector",
                    "placement_group_fallback_strategy",
                    "max_replicas_per_node",
                )
            ]
        ),
        "args": canonical(deployment.init_args),
        "kwargs": canonical(deployment.init_kwargs),
    }
    router = getattr(app, "_ingress_request_router", None)
    if router is not None:
        found["router"] = _application(router)
    return found


def _code(target: object) -> str:
    if isinstance(target, str):  # an import path
        return target
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None)
    if module is None or name is None:
        raise Unfingerprintable(f"no qualified name for {target!r}")
    return f"{module}:{name}"


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data, the same for equal values: pydantic models and
    dataclasses field by field (with their class), mappings in their order, sets
    sorted.  Raises ``Unfingerprintable`` for values of other kinds."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Enum):
        return {"enum": _code(type(value)), "value": canonical(value.value)}
    if isinstance(value, BaseModel):
        fields = {name: canonical(getattr(value, name)) for name in type(value).model_fields}
        found = {"model": _code(type(value)), "fields": fields}
        if value.__pydantic_extra__:
            found["extra"] = canonical(value.__pydantic_extra__)
        # Private attributes: ours (an agent's source file); other libraries' hold
        # caches (Ray's request router config keeps its class pickled, differently
        # in each process).
        if type(value).__module__.startswith(_OURS) and value.__pydantic_private__:
            found["private"] = canonical(value.__pydantic_private__)
        return found
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"dataclass": _code(type(value)), "fields": fields}
    if isinstance(value, Application):
        return {"application": _application(value)}
    if isinstance(value, Mapping):
        # In order: a mapping's order can matter (listings follow it).
        return {"mapping": [[canonical(k), canonical(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [canonical(v) for v in value]
        return {"set": sorted(items, key=lambda item: json.dumps(item, sort_keys=True))}
    if isinstance(value, PurePath):
        return {"path": str(value)}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, type) or callable(value):
        return {"code": _code(value)}
    raise Unfingerprintable(f"a bound {type(value).__qualname__} has no content form")


@dataclass(frozen=True)
class AppRecord:
    """What was deployed as one application: its fingerprint, and its creation
    time as Serve reports it (``last_deployed_time_s``)."""

    fingerprint: str
    created_s: float


@ray.remote(num_cpus=0, max_restarts=-1)
class DeployedApps:
    """The named actor: the record of each application deployed by astromesh.
    Restarted empty if its process dies: every application then counts as changed
    once (deployed again), never as unchanged."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[str, float]] = {}

    def records(self) -> dict[str, tuple[str, float]]:
        return dict(self._records)

    def put(self, records: dict[str, tuple[str, float]]) -> None:
        self._records.update(records)

    def forget(self, names: list[str]) -> None:
        for name in names:
            self._records.pop(name, None)


def _store() -> Any:
    return DeployedApps.options(  # type: ignore[attr-defined]  # ray.remote wraps the class
        name=STORE_NAME, namespace=ACTOR_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


def deployed_records() -> dict[str, AppRecord]:
    """The record of every application astromesh deployed on this cluster."""
    found: dict[str, tuple[str, float]] = ray.get(_store().records.remote(), timeout=60)
    return {name: AppRecord(fp, created) for name, (fp, created) in found.items()}


def record_deployed(fingerprints: Mapping[str, str | None]) -> None:
    """Record the applications just run (``serve.run`` returned) with these
    fingerprints; one without a fingerprint is forgotten (it is never unchanged)."""
    applications = serve.status().applications
    records: dict[str, tuple[str, float]] = {}
    for name, fp in fingerprints.items():
        running = applications.get(name)
        if fp is not None and running is not None:
            records[name] = (fp, running.last_deployed_time_s)
    unknown = [name for name in fingerprints if name not in records]
    store = _store()
    ray.get([store.put.remote(records), store.forget.remote(unknown)], timeout=60)


def forget_deployed(names: Iterable[str]) -> None:
    """Drop the records of deleted applications."""
    names = list(names)
    if names:
        ray.get(_store().forget.remote(names), timeout=60)


def is_current(record: AppRecord | None, fp: str | None, created_s: float) -> bool:
    """Whether an application created at ``created_s`` runs what ``fp`` describes,
    by its ``record``."""
    return record is not None and fp is not None and record == AppRecord(fp, created_s)
