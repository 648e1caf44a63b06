"""``cost_limit`` budgets over a ``SqliteLedger``: caps per scope and metric, the
clamp of ``max_tokens``, refusals before and overruns after a call, warn caps,
windows, persistence, merged specs and concurrent calls."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.guardrails.budget import (
    BudgetPolicy,
    Hold,
    RunBudget,
    estimate_prompt_tokens,
    provider_price,
)
from astromesh_ray.core.guardrails.ledger import SqliteLedger
from astromesh_ray.core.messages import CompletionRequest, Message, ToolCall, ToolSchema, Usage
from astromesh_ray.core.pricing import Price
from astromesh_ray.core.router import Candidate, ModelRouter
from astromesh_ray.errors import AstromeshError, BudgetExceeded, GuardrailUnavailable
from astromesh_ray.spec.guardrails import CostLimitSpec
from astromesh_ray.testing import ScriptedProvider

T0 = datetime(2026, 11, 5, 14, 30, 0, tzinfo=UTC).timestamp()


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def router(*prices: Price | None) -> ModelRouter:
    return ModelRouter(
        [
            Candidate(key=f"m{i}", provider=ScriptedProvider(name=f"m{i}"), price=p)
            for i, p in enumerate(prices)
        ]
    )


FREE_MODEL = router(Price(0.0, 0.0))
# $1 per 1,000 tokens in and out: a token costs $0.001.
PRICEY = router(Price(1000.0, 1000.0))


def request(text: str = "hi", max_tokens: int | None = None) -> CompletionRequest:
    parameters: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    return CompletionRequest(messages=[Message("user", text)], parameters=parameters)


def spec(**caps: Any) -> CostLimitSpec:
    return CostLimitSpec(type="cost_limit", **caps)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(clock: Clock) -> AsyncIterator[SqliteLedger]:
    store = SqliteLedger(":memory:", clock=clock)
    yield store
    await store.aclose()


def policy_of(ledger: SqliteLedger, clock: Clock, *specs: CostLimitSpec) -> BudgetPolicy:
    policy = BudgetPolicy.from_specs("support", specs, ledger, clock=clock)
    assert policy is not None
    return policy


async def call(
    budget: RunBudget,
    tokens: int,
    *,
    provider: ModelRouter = FREE_MODEL,
    cost: float = 0.0,
    req: CompletionRequest | None = None,
) -> tuple[Hold, list[str]]:
    """One model call that used ``tokens`` (all of them output) and cost ``cost``."""
    hold = await budget.before(req or request(max_tokens=tokens), provider)
    warnings = await budget.after(hold, Usage(0, tokens, 1, cost))
    return hold, hold.warnings + warnings


# -- the estimate ------------------------------------------------------------------


def test_the_prompt_estimate_follows_its_rule() -> None:
    # 3 + one message (4) + 6 ASCII characters / 3.
    assert estimate_prompt_tokens(request("abcdef")) == 3 + 4 + 2
    # Non-ASCII characters count one token each.
    assert estimate_prompt_tokens(request("日本語")) == 3 + 4 + 3
    with_tool = CompletionRequest(
        messages=[
            Message("user", "abc"),
            Message("assistant", None, tool_calls=[ToolCall("c1", "find", {"q": "x"})]),
        ],
        tools=[ToolSchema("find", "Find it", {"type": "object"})],
    )
    plain = estimate_prompt_tokens(request("abc"))
    # The tool call (4 + name + JSON arguments) and the tool (8 + its texts) count.
    assert estimate_prompt_tokens(with_tool) == plain + 4 + (4 + 2 + 4) + (8 + 2 + 3 + 6)


def test_a_router_is_priced_at_its_most_expensive_candidate() -> None:
    assert provider_price(router(Price(1, 8), Price(3, 2))) == Price(3, 8)
    assert provider_price(router(Price(1, 8), None)) is None
    assert provider_price(ScriptedProvider()) is None


# -- caps per scope and metric --------------------------------------------------------


async def test_a_turn_token_cap_ends_the_run_after_an_overrun(
    ledger: SqliteLedger, clock: Clock
) -> None:
    budget = policy_of(ledger, clock, spec(max_tokens_per_turn=100)).for_run("r1", "s1")
    hold = await budget.before(request(max_tokens=50), FREE_MODEL)
    with pytest.raises(BudgetExceeded) as caught:
        await budget.after(hold, Usage(30, 90, 1))  # the model ignored max_tokens
    error = caught.value
    assert error.details["cap"] == "max_tokens_per_turn"
    assert error.details["scope"] == "turn"
    assert error.details["unit"] == "tokens"
    assert (error.details["spent"], error.details["limit"]) == (120, 100)
    assert error.details["resets_at"] is None and error.details["retry_after_s"] is None
    assert (
        error.message == "budget max_tokens_per_turn exceeded: 120 of 100 tokens spent in this turn"
    )
    assert error.http_status == 429 and error.hint


async def test_session_spend_counts_across_turns_and_refuses_before_the_call(
    ledger: SqliteLedger, clock: Clock
) -> None:
    policy = policy_of(ledger, clock, spec(max_tokens_per_session=1000))
    first = policy.for_run("r1", "s1")
    await call(first, 500, req=request(max_tokens=600))
    await first.end()
    second = policy.for_run("r2", "s1")
    hold = await second.before(request(max_tokens=400), FREE_MODEL)
    await second.after(hold, Usage(0, 500, 1))  # spent: 1,000 of 1,000
    other = policy.for_run("r3", "s2")  # another session: its own budget
    await call(other, 10)
    third = policy.for_run("r4", "s1")
    with pytest.raises(BudgetExceeded) as caught:
        await third.before(request(max_tokens=10), FREE_MODEL)
    details = caught.value.details
    assert details["scope"] == "session" and details["session_id"] == "s1"
    assert details["agent"] == "support" and details["spent"] == 1000
    assert caught.value.message.startswith(
        "budget max_tokens_per_session exceeded: 1,000 of 1,000 tokens spent in session 's1'"
    )


async def test_max_tokens_is_lowered_to_what_the_tightest_cap_leaves(
    ledger: SqliteLedger, clock: Clock
) -> None:
    policy = policy_of(ledger, clock, spec(max_tokens_per_session=1000, max_tokens_per_day=10_000))
    budget = policy.for_run("r1", "s1")
    await call(budget, 900)
    sent = request("hi", max_tokens=500)
    prompt = estimate_prompt_tokens(sent)
    hold = await budget.before(sent, FREE_MODEL)
    assert hold.request.parameters["max_tokens"] == 100 - prompt
    assert sent.parameters["max_tokens"] == 500  # the caller's request is left alone
    assert any("max_tokens_per_session" in w for w in hold.warnings)
    await budget.release(hold)
    # Without max_tokens, a call is given what is left too.
    hold = await budget.before(request("hi"), FREE_MODEL)
    assert hold.request.parameters["max_tokens"] == 100 - prompt
    await budget.release(hold)
    # A request asking for less than is left is sent unchanged.
    small = request("hi", max_tokens=20)
    hold = await budget.before(small, FREE_MODEL)
    assert hold.request is small and hold.warnings == []


async def test_no_room_for_the_prompt_is_refused_before_the_call(
    ledger: SqliteLedger, clock: Clock
) -> None:
    budget = policy_of(ledger, clock, spec(max_tokens_per_turn=50)).for_run("r1", None)
    long = request("x" * 300)  # about 100 prompt tokens
    with pytest.raises(BudgetExceeded) as caught:
        await budget.before(long, FREE_MODEL)
    assert "the next model call needs at least" in caught.value.message
    assert caught.value.details["spent"] == 0
    # Nothing was reserved by the refused call: a small one still fits.
    hold = await budget.before(request("hi", max_tokens=10), FREE_MODEL)
    assert hold.request.parameters["max_tokens"] == 10


async def test_cost_caps_estimate_from_the_price_and_lower_max_tokens(
    ledger: SqliteLedger, clock: Clock
) -> None:
    budget = policy_of(ledger, clock, spec(max_cost_per_turn=0.05)).for_run("r1", "s1")
    sent = request("hi", max_tokens=1000)
    prompt = estimate_prompt_tokens(sent)
    hold = await budget.before(sent, PRICEY)
    # $0.05 at $0.001 a token: 50 tokens, the prompt's included.
    assert hold.request.parameters["max_tokens"] == 50 - prompt
    assert hold.estimate_usd == pytest.approx(0.05)
    with pytest.raises(BudgetExceeded) as caught:
        await budget.after(hold, Usage(prompt, 60, 1, cost_usd=(prompt + 60) / 1000))
    assert caught.value.details["unit"] == "usd"
    assert caught.value.details["cap"] == "max_cost_per_turn"
    assert "$0.0500" in caught.value.message


async def test_an_unknown_price_checks_cost_caps_with_actual_cost_only(
    ledger: SqliteLedger, clock: Clock
) -> None:
    unknown = router(None)
    budget = policy_of(ledger, clock, spec(max_cost_per_session=1.0)).for_run("r1", "s1")
    hold = await budget.before(request(max_tokens=10_000), unknown)
    assert hold.request.parameters["max_tokens"] == 10_000 and hold.estimate_usd is None
    await budget.after(hold, Usage(10, 10, 1, cost_usd=0.6))
    with pytest.raises(BudgetExceeded):
        await budget.after(await budget.before(request(), unknown), Usage(10, 10, 1, 0.6))
    # Spent $1.20 of $1.00: nothing is left, so the next call is refused before it runs.
    with pytest.raises(BudgetExceeded) as caught:
        await budget.before(request(), unknown)
    assert caught.value.details["spent"] == pytest.approx(1.2)


# -- warn caps, merged specs ---------------------------------------------------------


async def test_warn_and_log_caps_report_once_when_passed(
    ledger: SqliteLedger, clock: Clock
) -> None:
    policy = policy_of(
        ledger,
        clock,
        spec(max_tokens_per_session=100, action="warn"),
        spec(max_tokens_per_turn=150, action="log"),
    )
    budget = policy.for_run("r1", "s1")
    _, warnings = await call(budget, 80)
    assert warnings == []
    _, warnings = await call(budget, 80)  # session 160 > 100, turn 160 > 150
    assert len(warnings) == 2
    assert any("max_tokens_per_session passed (warn)" in w for w in warnings)
    assert any("max_tokens_per_turn passed (log)" in w for w in warnings)
    _, warnings = await call(budget, 80)  # still over: already reported
    assert warnings == []


async def test_several_specs_merge_and_the_lowest_block_limit_wins(
    ledger: SqliteLedger, clock: Clock
) -> None:
    policy = policy_of(
        ledger,
        clock,
        spec(max_tokens_per_session=1000),
        spec(max_tokens_per_session=500, max_cost_per_day=5.0),
        spec(max_tokens_per_session=200, action="warn"),
    )
    budget = policy.for_run("r1", "s1")
    _, warnings = await call(budget, 300)
    assert len(warnings) == 1
    with pytest.raises(BudgetExceeded) as caught:
        await call(budget, 250, req=request(max_tokens=250))
    assert caught.value.details["limit"] == 500
    assert BudgetPolicy.from_specs("support", [], SqliteLedger(":memory:")) is None


# -- windows -------------------------------------------------------------------------


async def test_hour_and_day_windows_reset_on_the_clock(ledger: SqliteLedger, clock: Clock) -> None:
    clock.now = datetime(2026, 11, 5, 14, 59, 30, tzinfo=UTC).timestamp()
    policy = policy_of(ledger, clock, spec(max_tokens_per_hour=100, max_tokens_per_day=150))
    await call(policy.for_run("r1", "a"), 100)
    with pytest.raises(BudgetExceeded) as caught:
        await policy.for_run("r2", "b").before(request(max_tokens=5), FREE_MODEL)
    details = caught.value.details
    assert details["scope"] == "agent" and details["cap"] == "max_tokens_per_hour"
    assert details["resets_at"] == "2026-11-05T15:00:00Z"
    assert details["retry_after_s"] == 30
    AstromeshError.from_dict(caught.value.to_dict())  # details are JSON values

    clock.now += 31  # the next hour: the hour cap is fresh, the day cap is not
    await call(policy.for_run("r3", "c"), 50)
    with pytest.raises(BudgetExceeded) as caught:
        await policy.for_run("r4", "d").before(request(max_tokens=5), FREE_MODEL)
    assert caught.value.details["cap"] == "max_tokens_per_day"
    assert caught.value.details["resets_at"] == "2026-11-06T00:00:00Z"
    assert caught.value.details["retry_after_s"] == 9 * 3600 - 1


async def test_old_windows_are_pruned(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "budget.sqlite"
    ledger = SqliteLedger(path, clock=clock)
    policy = policy_of(ledger, clock, spec(max_tokens_per_hour=1000))
    budget = policy.for_run("r1", "s1")
    await call(budget, 10)
    old = budget.key("hour", clock.now)
    assert (await ledger.spent([old]))[old]["tokens"] == 10
    clock.now += 2 * 3600
    await call(budget, 10)
    assert await ledger.spent([old]) == {}
    await ledger.aclose()
    with sqlite3.connect(path) as conn:
        keys = {k for (k,) in conn.execute("SELECT key FROM budget_spend")}
    assert old not in keys and budget.key("hour", clock.now) in keys


# -- keys: turns, sessions, persistence ----------------------------------------------


async def test_tasks_of_one_run_share_its_turn_until_it_ends(
    ledger: SqliteLedger, clock: Clock
) -> None:
    policy = policy_of(ledger, clock, spec(max_tokens_per_turn=100))
    await call(policy.for_run("r1", "s1"), 95)
    # Another RunBudget of the same run (a task on another replica) shares its turn...
    task = policy.for_run("r1", "s1")
    with pytest.raises(BudgetExceeded):
        await task.before(request("hi there, how are you", max_tokens=50), FREE_MODEL)
    # ... another run does not.
    await call(policy.for_run("r2", "s1"), 50)
    await task.end()
    hold = await policy.for_run("r1", "s1").before(request(max_tokens=50), FREE_MODEL)
    assert hold.request.parameters["max_tokens"] == 50


async def test_session_caps_count_per_run_without_a_session_id(
    ledger: SqliteLedger, clock: Clock
) -> None:
    policy = policy_of(ledger, clock, spec(max_tokens_per_session=100))
    first = policy.for_run("r1", None)
    await call(first, 100)
    with pytest.raises(BudgetExceeded) as caught:
        await first.before(request(max_tokens=5), FREE_MODEL)
    assert "in this run (no session id)" in caught.value.message
    assert caught.value.details["session_id"] is None
    await call(policy.for_run("r2", None), 50)  # another run: its own count
    await first.end()
    await call(policy.for_run("r1", None), 50)  # dropped with the turn


async def test_session_and_hour_spend_survive_reopening_the_file(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "data" / "budget.sqlite"
    specs = (spec(max_tokens_per_session=1000, max_tokens_per_hour=5000),)
    ledger = SqliteLedger(path, clock=clock)
    budget = policy_of(ledger, clock, *specs).for_run("r1", "s1")
    await call(budget, 700)
    await budget.end()
    await ledger.aclose()

    reopened = SqliteLedger(path, clock=clock)
    budget = policy_of(reopened, clock, *specs).for_run("r2", "s1")
    keys = [budget.key("session", clock.now), budget.key("hour", clock.now)]
    assert await reopened.spent(keys) == {k: {"tokens": 700.0} for k in keys}
    sent = request("hi", max_tokens=1000)
    hold = await budget.before(sent, FREE_MODEL)
    assert hold.request.parameters["max_tokens"] == 300 - estimate_prompt_tokens(sent)
    await reopened.aclose()


async def test_a_released_hold_gives_its_room_back(ledger: SqliteLedger, clock: Clock) -> None:
    budget = policy_of(ledger, clock, spec(max_tokens_per_turn=100)).for_run("r1", "s1")
    hold = await budget.before(request(max_tokens=90), FREE_MODEL)
    with pytest.raises(BudgetExceeded):
        await budget.before(request(max_tokens=90), FREE_MODEL)  # 90 are held
    await budget.release(hold)  # the call failed
    second = await budget.before(request(max_tokens=90), FREE_MODEL)
    assert second.request.parameters["max_tokens"] == 90
    await budget.end()  # releases the open hold and drops the turn
    assert await ledger.spent([budget.key("turn", clock.now)]) == {}


async def test_an_unusable_file_is_a_guardrail_failure(tmp_path: Path, clock: Clock) -> None:
    ledger = SqliteLedger(tmp_path, clock=clock)  # a directory, not a file
    budget = policy_of(ledger, clock, spec(max_tokens_per_turn=100)).for_run("r1", "s1")
    with pytest.raises(GuardrailUnavailable) as caught:
        await budget.before(request(), FREE_MODEL)
    assert caught.value.details["guardrail"] == "cost_limit"
    await ledger.aclose()


# -- concurrency ---------------------------------------------------------------------


async def test_concurrent_calls_never_overspend_a_cap(ledger: SqliteLedger, clock: Clock) -> None:
    cap = 2000
    policy = policy_of(ledger, clock, spec(max_tokens_per_session=cap))
    rng = random.Random(7)
    n = 20
    arrived = 0
    all_reserved = asyncio.Event()
    settled: list[int] = []
    refused: list[BudgetExceeded] = []
    estimates: list[int] = []

    async def pair(i: int) -> None:
        nonlocal arrived
        budget = policy.for_run(f"r{i}", "s1")
        try:
            hold = await budget.before(request(f"question {i}", max_tokens=200), FREE_MODEL)
        except BudgetExceeded as exc:
            refused.append(exc)
            hold = None
        arrived += 1
        if arrived == n:
            all_reserved.set()
        # Every call reserves before any settles: without reservations all would pass.
        await all_reserved.wait()
        if hold is not None:
            estimates.append(hold.estimate_tokens)
            used = rng.randint(1, hold.estimate_tokens)
            await budget.after(hold, Usage(0, used, 1))
            settled.append(used)

    await asyncio.gather(*(pair(i) for i in range(n)))
    key = policy.for_run("x", "s1").key("session", clock.now)
    spent = (await ledger.spent([key]))[key]["tokens"]
    assert spent == sum(settled)
    assert spent <= cap + max(estimates)
    assert refused and settled
    assert sum(estimates) <= cap  # what was reserved at once never passed the cap
