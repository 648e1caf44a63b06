"""``NamedActorClient``: the client half of a named, detached, shared Ray actor (the
vector store actors, the paused-runs actor, the guardrail-state actor).

What every such client does the same way lives here: the handle looked up (or the
actor started) lazily, off the event loop, by name; each call bounded by
``call_timeout_s``; the handle dropped when pickled (each process looks it up
again) and on ``aclose`` (the actor is shared: it keeps running); and Ray's
failures turned into the subclass's own ``AstromeshError``:

    ActorUnavailableError   restarting or unreachable for now: the handle stays good
    RayActorError           dead for good: looked up (or started) again next time
    other Ray errors        the handle dropped, the error described

A subclass gives ``_lookup`` (the handle: ``Actor.options(name=..., get_if_exists=
True, lifetime="detached").remote(...)``), ``_unavailable`` (its error for an
actor it cannot reach) and ``_timed_out`` (its error for a call past the timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from astromesh_ray.errors import AstromeshError
from astromesh_ray.serve.handles import RAY_FAILURES
from astromesh_ray.serve.handles import failure as ray_failure
from astromesh_ray.serve.outcome import unwrap

# The namespace every named actor of astromesh-ray lives in.
ACTOR_NAMESPACE = "astromesh"


class NamedActorClient:
    """Calls the methods of one named actor; each returns an outcome value
    (``serve/outcome.py``), unwrapped here."""

    # Cancel a call that timed out (it is not left to run unseen): for calls the
    # caller will not retry blindly.
    cancel_on_timeout = False

    def __init__(self, actor_name: str, call_timeout_s: float) -> None:
        self.actor_name = actor_name
        self.call_timeout_s = call_timeout_s
        self._actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_actor": None}

    async def aclose(self) -> None:
        """Forget the actor handle; the actor (shared) keeps running."""
        self._actor = None

    def _lookup(self) -> Any:
        """The actor's handle, starting the actor if nobody has (blocks on the GCS)."""
        raise NotImplementedError

    def _unavailable(self, exc: BaseException) -> AstromeshError:
        raise NotImplementedError

    def _timed_out(self, method: str) -> AstromeshError:
        raise NotImplementedError

    def _check_ray(self) -> None:
        """Raise when the actor cannot be reached at all (default: Ray will say)."""

    async def _call(self, method: str, *args: Any) -> Any:
        self._check_ray()
        ref: Any = None
        try:
            if self._actor is None:
                self._actor = await asyncio.to_thread(self._lookup)
            ref = getattr(self._actor, method).remote(*args)
            outcome = await asyncio.wait_for(ref, self.call_timeout_s)
        except TimeoutError as exc:
            if self.cancel_on_timeout and ref is not None:
                ray.cancel(ref)
            raise self._timed_out(method) from exc
        except ActorUnavailableError as exc:
            raise self._unavailable(exc) from exc
        except RayActorError as exc:
            self._actor = None
            raise self._unavailable(exc) from exc
        except RAY_FAILURES as exc:
            self._actor = None
            raise ray_failure(exc, self._unavailable) from exc
        return unwrap(outcome)
