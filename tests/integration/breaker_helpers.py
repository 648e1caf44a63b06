"""Helpers for tests of the cluster-wide circuit breaker: find the actor, wait until
every replica's copy has caught up with it (a condition, never a fixed sleep), and
read a run's routing decisions."""

from __future__ import annotations

import time
from typing import Any

import ray

from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
from astromesh_ray.serve.breaker import ACTOR_NAME

HOT_METHODS = ("allow", "success", "failure", "release")


def breaker() -> Any:
    """The breaker actor's handle."""
    return ray.get_actor(ACTOR_NAME, namespace=ACTOR_NAMESPACE)


def subscribers() -> dict[str, Any]:
    seen: dict[str, Any] = ray.get(breaker().subscribers.remote(), timeout=30)
    return seen


def wait_caught_up(at_least: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait until every replica subscribed to the breaker actor (and at least
    ``at_least`` of them) has seen its current version, and polls again."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = subscribers()
        subs = seen["subscribers"]
        if len(subs) >= at_least and all(
            s["epoch"] == seen["epoch"] and s["version"] == seen["version"] and s["waiting"]
            for s in subs.values()
        ):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas did not catch up with the breaker actor: {seen}")
        time.sleep(0.02)


def hot_calls() -> int:
    """How many allow/success/failure/release calls the breaker actor has answered."""
    calls: dict[str, int] = ray.get(breaker().calls.remote(), timeout=30)
    return sum(calls.get(m, 0) for m in HOT_METHODS)


def model_route(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The router's decisions for the (first) model call of a run's trace."""
    for span in body["trace"]:
        route = span.get("attributes", {}).get("route") or span.get("route")
        if route:
            return list(route)
    raise AssertionError(f"no model call with a route in the trace: {body['trace']}")
