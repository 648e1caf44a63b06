"""The guardrail-state actor on a real local Ray cluster: budget spend survives the
actor's restart, clients in other processes share one ledger without overspending,
placeholders are the same for every client (and never on disk), and an actor that
cannot answer fails the check instead of letting a call through."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import ray
from ray.exceptions import RayActorError

from astromesh_ray.core.guardrails.budget import BudgetPolicy, Hold
from astromesh_ray.core.messages import CompletionRequest, Message, Usage
from astromesh_ray.core.pricing import Price
from astromesh_ray.core.router import Candidate, ModelRouter
from astromesh_ray.errors import BudgetExceeded, GuardrailUnavailable
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
from astromesh_ray.serve.guardrail_state import (
    ActorLedger,
    ActorVault,
    GuardrailStateActor,
    actor_name,
)
from astromesh_ray.spec.guardrails import CostLimitSpec
from astromesh_ray.testing import ScriptedProvider

pytestmark = pytest.mark.integration

T = TypeVar("T")
CAP = 2000
ATTEMPTS = 240  # of half a second: how long a restarting actor may take, at most


def free_model() -> ModelRouter:
    return ModelRouter([Candidate("m", ScriptedProvider(), price=Price(0.0, 0.0))])


def request(text: str, max_tokens: int) -> CompletionRequest:
    return CompletionRequest(
        messages=[Message("user", text)], parameters={"max_tokens": max_tokens}
    )


def policy(ledger: ActorLedger, **caps: Any) -> BudgetPolicy:
    found = BudgetPolicy.from_specs("support", [CostLimitSpec(type="cost_limit", **caps)], ledger)
    assert found is not None
    return found


async def eventually(make: Callable[[], Awaitable[T]]) -> T:
    """``make()`` once the actor answers again (it may be restarting)."""
    for _ in range(ATTEMPTS):
        try:
            return await make()
        except GuardrailUnavailable:
            await asyncio.sleep(0.5)
    return await make()


@pytest.fixture
def path(serve_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite path (so a fresh actor); the actor is killed afterwards."""
    file = str(tmp_path / "guardrails.sqlite")
    yield file
    with contextlib.suppress(ValueError):  # never started, or already gone
        ray.kill(ray.get_actor(actor_name(file), namespace=ACTOR_NAMESPACE), no_restart=True)


def spend_keys(hold: Hold) -> list[str]:
    return sorted({line.key for line in hold.lines if not line.key.startswith("turn:")})


async def test_spend_survives_a_restart_of_the_actor(path: str) -> None:
    ledger, vault = ActorLedger(path), ActorVault(path)
    budget = policy(ledger, max_tokens_per_session=1000, max_tokens_per_hour=5000).for_run(
        "r1", "s1"
    )
    hold = await budget.before(request("hi", 300), free_model())
    await budget.after(hold, Usage(0, 300, 1))
    assert await vault.assign("support:s1", [("EMAIL_ADDRESS", "ann@example.org")]) == ["[EMAIL_1]"]

    ray.kill(ray.get_actor(actor_name(path), namespace=ACTOR_NAMESPACE), no_restart=False)
    # Placeholders live in the actor's memory only: once they are gone, the actor
    # that answers is the restarted one.
    for _ in range(ATTEMPTS):
        if await eventually(lambda: vault.originals("support:s1")) == {}:
            break
        await asyncio.sleep(0.5)
    assert await vault.originals("support:s1") == {}
    keys = spend_keys(hold)
    assert len(keys) == 2  # the session and the hour
    assert await ledger.spent(keys) == {k: {"tokens": 300.0} for k in keys}
    # ... and the restarted actor still enforces them.
    later = policy(ledger, max_tokens_per_session=1000).for_run("r2", "s1")
    hold = await later.before(request("hi", 1000), free_model())
    assert hold.request.parameters["max_tokens"] < 700


async def test_a_dead_actor_is_looked_up_again_and_reloads_its_file(path: str) -> None:
    ledger = ActorLedger(path)
    budget = policy(ledger, max_tokens_per_session=1000).for_run("r1", "s1")
    hold = await budget.before(request("hi", 100), free_model())
    await budget.after(hold, Usage(0, 100, 1))

    actor = ray.get_actor(actor_name(path), namespace=ACTOR_NAMESPACE)
    ray.kill(actor, no_restart=True)
    for _ in range(ATTEMPTS):  # until the kill has landed
        try:
            await actor.spent.remote([])
        except RayActorError:
            break
        await asyncio.sleep(0.5)
    with pytest.raises(GuardrailUnavailable) as caught:
        await ledger.spent(spend_keys(hold))  # its handle is dead: refused, not let through
    assert caught.value.details == {"guardrail": "cost_limit", "retryable": True}
    found = await eventually(lambda: ledger.spent(spend_keys(hold)))
    assert found == {k: {"tokens": 100.0} for k in spend_keys(hold)}


# -- two clients in two processes ----------------------------------------------------


@ray.remote(num_cpus=0)
class Gate:
    """Holds every caller until ``n`` have arrived: all reservations happen before
    any settlement, so a ledger that did not count reservations would overspend."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.open = asyncio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n:
            self.open.set()
        await self.open.wait()


async def _spend(ledger: ActorLedger, gate: Any, worker: str, calls: int) -> list[int | None]:
    budget_policy = policy(ledger, max_tokens_per_session=CAP)
    model = free_model()

    async def pair(i: int) -> int | None:
        budget = budget_policy.for_run(f"{worker}-{i}", "s1")
        try:
            hold: Hold | None = await budget.before(request(f"question {i}", 200), model)
        except BudgetExceeded:
            hold = None
        await gate.arrive.remote()
        if hold is None:
            return None
        # The worst case: every call uses all it reserved.
        await budget.after(hold, Usage(0, hold.estimate_tokens, 1))
        return hold.estimate_tokens

    return list(await asyncio.gather(*(pair(i) for i in range(calls))))


@ray.remote(num_cpus=0)
def spend_elsewhere(ledger: ActorLedger, gate: Any, worker: str, calls: int) -> list[int | None]:
    """``calls`` concurrent model calls' budget checks in another process."""
    return asyncio.run(_spend(ledger, gate, worker, calls))


async def test_clients_in_two_processes_never_overspend_together(path: str) -> None:
    gate = Gate.remote(20)  # type: ignore[attr-defined]
    # Each task gets its own client (the pickled one drops its handle).
    results = await asyncio.gather(
        spend_elsewhere.remote(ActorLedger(path), gate, "a", 10),
        spend_elsewhere.remote(ActorLedger(path), gate, "b", 10),
    )
    outcomes = [r for worker in results for r in worker]
    settled = [r for r in outcomes if r is not None]
    assert settled and len(settled) < len(outcomes)  # some were refused
    key = (
        policy(ActorLedger(path), max_tokens_per_session=CAP).for_run("x", "s1").key("session", 0.0)
    )
    spent = (await ActorLedger(path).spent([key]))[key]["tokens"]
    assert spent == sum(settled)
    assert spent <= CAP


# -- placeholders --------------------------------------------------------------------


@ray.remote(num_cpus=0)
def assign_elsewhere(vault: ActorVault, scope: str, items: list[tuple[str, str]]) -> Any:
    """Assign placeholders, then read the scope, from another process."""

    async def both() -> tuple[list[str], dict[str, str]]:
        return await vault.assign(scope, items), await vault.originals(scope)

    return asyncio.run(both())


async def test_placeholders_are_the_same_for_every_client_and_never_on_disk(
    path: str,
) -> None:
    here = ActorVault(path)
    assert await here.assign("support:s1", [("EMAIL_ADDRESS", "ann@example.org")]) == ["[EMAIL_1]"]
    items = [("EMAIL_ADDRESS", "bob@example.org"), ("EMAIL_ADDRESS", "ann@example.org")]
    placeholders, originals = await assign_elsewhere.remote(here, "support:s1", items)
    assert placeholders == ["[EMAIL_2]", "[EMAIL_1]"]
    assert originals == {"[EMAIL_1]": "ann@example.org", "[EMAIL_2]": "bob@example.org"}
    assert await here.originals("support:s1") == originals
    assert await here.assign("support:s2", [("EMAIL_ADDRESS", "bob@example.org")]) == ["[EMAIL_1]"]
    # The ledger's file (same actor) holds no original.
    ledger = ActorLedger(path)
    await ledger.drop(["nothing"])
    files = [p for p in Path(path).parent.iterdir() if p.name.startswith("guardrails.sqlite")]
    assert files
    assert not any(b"example.org" in p.read_bytes() for p in files)


# -- an actor that cannot answer -------------------------------------------------------


async def test_an_unreachable_actor_fails_the_check(path: str) -> None:
    # The actor exists under its name but can never be scheduled (no node has the
    # resource): a client finds it and its calls are never answered.
    stuck = GuardrailStateActor.options(  # type: ignore[attr-defined]
        name=actor_name(path),
        namespace=ACTOR_NAMESPACE,
        lifetime="detached",
        resources={"no-such-node": 1},
    ).remote(path)
    budget = policy(ActorLedger(path, call_timeout_s=2.0), max_tokens_per_turn=100).for_run(
        "r1", "s1"
    )
    with pytest.raises(GuardrailUnavailable) as caught:
        await budget.before(request("hi", 10), free_model())
    assert caught.value.details == {"guardrail": "cost_limit", "retryable": True}
    with pytest.raises(GuardrailUnavailable) as caught:
        await ActorVault(path, call_timeout_s=2.0).assign("s", [("EMAIL_ADDRESS", "a@b.c")])
    assert caught.value.details == {"guardrail": "pii_detection", "retryable": True}
    assert caught.value.http_status == 503
    ray.kill(stuck, no_restart=True)
