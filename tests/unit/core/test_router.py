from __future__ import annotations

import asyncio

import pytest

from astromesh_ray.core.breaker import (
    BreakerPolicy,
    CircuitBreakers,
    LocalBreakerStore,
    ManualClock,
)
from astromesh_ray.core.messages import CompletionChunk, CompletionRequest, Message
from astromesh_ray.core.pricing import Price, price_for
from astromesh_ray.core.router import Candidate, ModelRouter
from astromesh_ray.errors import ProviderError, RunError
from astromesh_ray.testing import ScriptedProvider

REQ = CompletionRequest(messages=[Message("user", "hello there")], parameters={"max_tokens": 100})


def down(name: str, status: int | None = None) -> ProviderError:
    return ProviderError(
        f"{name}: down", hint=f"start {name}", provider=name, status=status, retryable=True
    )


def cand(key: str, steps: list[object], **kw: object) -> Candidate:
    return Candidate(key=key, provider=ScriptedProvider(steps, name=key), **kw)  # type: ignore[arg-type]


async def test_declared_order_falls_back_and_records_the_route() -> None:
    router = ModelRouter([cand("a", [down("a")]), cand("b", ["from b"])])
    completion = await router.complete(REQ)
    assert completion.message.content == "from b"
    assert [(s["candidate"], s["reason"], s["outcome"]) for s in completion.route] == [
        ("a", "primary", "failed: a: down"),
        ("b", "fallback", "ok"),
    ]


async def test_all_failing_joins_messages_and_hints() -> None:
    router = ModelRouter([cand("a", [down("a")]), cand("b", [down("b", 401)])])
    with pytest.raises(ProviderError) as info:
        await router.complete(REQ)
    assert info.value.hint == "start a; or start b"
    assert "a: down; b: down" in info.value.message
    assert [s["candidate"] for s in info.value.details["route"]] == ["a", "b"]


async def test_cost_optimized_prefers_the_cheapest_and_prices_the_usage() -> None:
    pricey = cand("pricey", [], price=Price(10, 30))
    cheap = cand("cheap", ["cheap answer"], price=Price(0.1, 0.4))
    unknown = cand("unknown", [])
    router = ModelRouter([unknown, pricey, cheap], strategy="cost_optimized")
    assert [c.key for c, _ in router.order(REQ)] == ["cheap", "pricey", "unknown"]
    completion = await router.complete(REQ)
    assert completion.message.content == "cheap answer"
    usage = completion.usage
    assert usage.cost_usd == pytest.approx(
        (usage.input_tokens * 0.1 + usage.output_tokens * 0.4) / 1e6
    )
    assert completion.route[0]["reason"].startswith("estimated cost $")


async def test_latency_optimized_probes_untried_then_prefers_fastest() -> None:
    class Slow(ScriptedProvider):
        async def complete(self, request: CompletionRequest):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.05)
            return await super().complete(request)

    slow = Candidate("slow", Slow(["s1"], name="slow"))
    fast = cand("fast", ["f1", "f2"])
    router = ModelRouter([slow, fast], strategy="latency_optimized")
    assert (await router.complete(REQ)).message.content == "s1"  # untried: declared order
    assert (await router.complete(REQ)).message.content == "f1"  # fast is still untried
    assert [c.key for c, _ in router.order(REQ)] == ["fast", "slow"]
    third = await router.complete(REQ)
    assert third.message.content == "f2"
    assert [s["candidate"] for s in third.route] == ["fast"]  # slow is not asked again


async def test_quality_first_and_round_robin() -> None:
    low, high = cand("low", [], quality=1), cand("high", ["high"], quality=9)
    completion = await ModelRouter([low, high], strategy="quality_first").complete(REQ)
    assert completion.message.content == "high"
    assert [s["candidate"] for s in completion.route] == ["high"]  # low is never asked
    rr = ModelRouter([cand("x", ["x1", "x2"]), cand("y", ["y1"])], strategy="round_robin")
    answers = [(await rr.complete(REQ)).message.content for _ in range(3)]
    assert answers == ["x1", "y1", "x2"]


async def test_breaker_opens_after_threshold_then_half_open_probe_closes_it() -> None:
    clock = ManualClock()
    store = LocalBreakerStore(CircuitBreakers(clock=clock))
    primary = ScriptedProvider([down("p"), down("p"), down("p"), "p is back"], name="p")
    backup = ScriptedProvider(["b1", "b2", "b3", "b4"], name="b")
    router = ModelRouter(
        [Candidate("p", primary), Candidate("b", backup)],
        breakers=store,
        policy=BreakerPolicy(failure_threshold=3, cooldown_s=60),
    )
    for _ in range(3):
        assert (await router.complete(REQ)).message.content.startswith("b")
    snap = await store.snapshot()
    assert snap["p"][0]["state"] == "open" and snap["p"][0]["trips"] == 1
    # Open: the primary is not called at all (its script would be consumed otherwise).
    completion = await router.complete(REQ)
    assert completion.message.content == "b4"
    assert completion.route[0]["outcome"] == "skipped: circuit open"
    clock.advance(59.9)
    assert (await store.snapshot())["p"][0]["cooldown_remaining_s"] == pytest.approx(0.1)
    clock.advance(0.2)
    completion = await router.complete(REQ)  # half-open: one probe, which succeeds
    assert completion.message.content == "p is back"
    assert completion.route[0]["breaker"] == "closed"
    primary.assert_consumed()
    backup.assert_consumed()


def test_half_open_allows_one_probe_and_a_failed_probe_reopens() -> None:
    clock = ManualClock()
    breakers = CircuitBreakers(clock=clock)
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=10)
    assert breakers.failure("k", policy) == "open"
    assert breakers.allow("k", policy) == (False, "open")
    clock.advance(10)
    assert breakers.allow("k", policy) == (True, "half_open")
    assert breakers.allow("k", policy) == (False, "half_open")  # only one probe
    assert breakers.failure("k", policy) == "open"
    clock.advance(5)
    assert breakers.allow("k", policy) == (False, "open")  # the cooldown restarted


async def test_caller_faults_do_not_trip_the_breaker() -> None:
    store = LocalBreakerStore()
    bad_requests = [down("p", 400), down("p", 422), down("p", 401), down("p", 400)]
    router = ModelRouter(
        [cand("p", bad_requests), cand("b", ["b"] * 4)],
        breakers=store,
        policy=BreakerPolicy(failure_threshold=1),
    )
    for _ in range(4):
        completion = await router.complete(REQ)
        assert completion.route[0]["breaker"].startswith("closed (caller's fault")
    assert (await store.snapshot())["p"][0]["state"] == "closed"


async def test_no_fallback_when_disabled() -> None:
    router = ModelRouter([cand("a", [down("a")]), cand("b", [])], fallback=False)
    with pytest.raises(ProviderError, match="a: down"):
        await router.complete(REQ)


async def test_stream_falls_back_before_the_first_chunk_only() -> None:
    router = ModelRouter([cand("a", [down("a")]), cand("b", ["streamed words here"])])
    chunks = [c async for c in router.stream(REQ)]
    assert "".join(c.text for c in chunks) == "streamed words here"
    assert [s["outcome"] for s in chunks[-1].route] == ["failed: a: down", "ok"]


async def test_health_checks_feed_the_breaker() -> None:
    class Dead(ScriptedProvider):
        async def health(self) -> bool:
            return False

    store = LocalBreakerStore()
    router = ModelRouter(
        [Candidate("dead", Dead([], name="dead")), cand("ok", ["fine"])],
        breakers=store,
        policy=BreakerPolicy(failure_threshold=2),
        health_check_interval_s=0.01,
    )
    assert await router.check_health() == {"dead": False, "ok": True}
    assert router.start_health_checks()
    for _ in range(100):
        if (await store.snapshot())["dead"][0]["state"] == "open":
            break
        await asyncio.sleep(0.01)
    completion = await router.complete(REQ)  # the dead one is skipped, never called
    assert completion.route[0]["outcome"] == "skipped: circuit open"
    assert completion.message.content == "fine"
    await router.aclose()


def test_price_table_and_overrides() -> None:
    assert price_for("openai", "gpt-4o-mini") == Price(0.15, 0.60)
    assert price_for("ollama", "llama3.1:8b") == Price(0.0, 0.0)
    assert price_for("openai", "some-new-model") is None
    assert price_for("openai", "gpt-4o-mini", Price(1, 2)) == Price(1, 2)


def test_a_probe_that_never_reports_back_frees_its_slot_after_a_cooldown() -> None:
    clock = ManualClock()
    breakers = CircuitBreakers(clock=clock)
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=10)
    breakers.failure("k", policy)
    clock.advance(10)
    assert breakers.allow("k", policy) == (True, "half_open")  # the probe's caller dies
    clock.advance(9)
    assert breakers.allow("k", policy) == (False, "half_open")
    clock.advance(1)
    assert breakers.allow("k", policy) == (True, "half_open")  # not stuck forever


def _opened(clock: ManualClock) -> tuple[LocalBreakerStore, BreakerPolicy]:
    store = LocalBreakerStore(CircuitBreakers(clock=clock))
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=60)
    store.breakers.failure("a", policy)
    clock.advance(61)  # half-open: the next request is the probe
    return store, policy


async def test_a_bug_in_a_provider_propagates_uncounted_and_frees_the_probe_slot() -> None:
    class Buggy(ScriptedProvider):
        async def complete(self, request: CompletionRequest):  # type: ignore[no-untyped-def]
            raise TypeError("unsupported operand")

    clock = ManualClock()
    store, policy = _opened(clock)
    backup = cand("b", [])  # never called: a bug is not a reason to fall back
    router = ModelRouter(
        [Candidate("a", Buggy([], name="a")), backup], breakers=store, policy=policy
    )
    with pytest.raises(TypeError, match="unsupported operand"):
        await router.complete(REQ)
    snap = (await store.snapshot())["a"][0]
    assert snap["state"] == "half_open" and snap["consecutive_failures"] == 1  # not counted
    assert await store.allow("a", policy) == (True, "half_open")  # the slot was freed


async def test_a_bug_in_a_stream_propagates_uncounted() -> None:
    class Buggy(ScriptedProvider):
        async def stream(self, request: CompletionRequest):  # type: ignore[no-untyped-def,override]
            yield CompletionChunk(text="par")
            raise KeyError("oops")

    store = LocalBreakerStore()
    policy = BreakerPolicy(failure_threshold=1)
    router = ModelRouter(
        [Candidate("a", Buggy([], name="a")), cand("b", [])], breakers=store, policy=policy
    )
    with pytest.raises(KeyError):
        _ = [c async for c in router.stream(REQ)]
    snap = (await store.snapshot())["a"][0]
    assert snap["state"] == "closed" and snap["consecutive_failures"] == 0  # not counted


async def test_other_astromesh_errors_are_not_provider_failures() -> None:
    store = LocalBreakerStore()
    policy = BreakerPolicy(failure_threshold=1)
    router = ModelRouter(
        [cand("a", [RunError("internal error: boom")]), cand("b", [])],
        breakers=store,
        policy=policy,
    )
    with pytest.raises(RunError, match="boom"):
        await router.complete(REQ)
    assert await store.allow("a", policy) == (True, "closed")


async def test_a_failed_probe_falls_back_and_reopens() -> None:
    clock = ManualClock()
    store, policy = _opened(clock)
    router = ModelRouter(
        [cand("a", [down("a")]), cand("b", ["from b"])], breakers=store, policy=policy
    )
    completion = await router.complete(REQ)
    assert completion.message.content == "from b"
    assert completion.route[0]["outcome"] == "failed: a: down"
    assert completion.route[0]["breaker"] == "open"
    assert (await store.snapshot())["a"][0]["state"] == "open"


async def test_stream_failure_after_chunks_is_reraised_not_fallen_back() -> None:
    class Breaks(ScriptedProvider):
        async def stream(self, request: CompletionRequest):  # type: ignore[no-untyped-def,override]
            yield CompletionChunk(text="half an ")
            raise down("a")

    store = LocalBreakerStore()
    policy = BreakerPolicy(failure_threshold=1)
    router = ModelRouter(
        [Candidate("a", Breaks([], name="a")), cand("b", [])], breakers=store, policy=policy
    )
    seen: list[str] = []
    with pytest.raises(ProviderError, match="a: down"):
        async for chunk in router.stream(REQ):
            seen.append(chunk.text)
    assert seen == ["half an "]
    assert (await store.snapshot())["a"][0]["state"] == "open"  # it did count


async def test_stream_prices_and_routes_the_last_chunk() -> None:
    store = LocalBreakerStore()
    router = ModelRouter([cand("a", ["some streamed answer"], price=Price(1, 2))], breakers=store)
    chunks = [c async for c in router.stream(REQ)]
    last = chunks[-1]
    assert last.usage is not None and last.usage.cost_usd == pytest.approx(
        (last.usage.input_tokens * 1 + last.usage.output_tokens * 2) / 1e6
    )
    assert [(s["candidate"], s["outcome"], s["breaker"]) for s in last.route] == [
        ("a", "ok", "closed")
    ]


async def test_breakers_with_different_policies_do_not_share_state() -> None:
    store = LocalBreakerStore()
    strict = ModelRouter(
        [cand("p", [down("p")]), cand("b", ["b1"])],
        breakers=store,
        policy=BreakerPolicy(failure_threshold=1, cooldown_s=60),
    )
    lenient = ModelRouter(
        [cand("p", ["p answers"]), cand("b", [])],
        breakers=store,
        policy=BreakerPolicy(failure_threshold=5, cooldown_s=10),
    )
    assert (await strict.complete(REQ)).message.content == "b1"
    # The strict agent's breaker is open; the lenient agent's is its own, still closed.
    assert (await lenient.complete(REQ)).message.content == "p answers"
    entries = (await store.snapshot())["p"]
    assert sorted((e["failure_threshold"], e["state"]) for e in entries) == [
        (1, "open"),
        (5, "closed"),
    ]


async def test_a_cancelled_probe_frees_the_slot_at_once() -> None:
    class Hang(ScriptedProvider):
        async def complete(self, request: CompletionRequest):  # type: ignore[no-untyped-def]
            await asyncio.sleep(60)

    clock = ManualClock()
    store, policy = _opened(clock)
    router = ModelRouter([Candidate("a", Hang([], name="a"))], breakers=store, policy=policy)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await router.complete(REQ)
    # The next request may probe again straight away; no extra cooldown.
    assert await store.allow("a", policy) == (True, "half_open")


async def test_an_abandoned_stream_frees_the_probe_slot() -> None:
    clock = ManualClock()
    store, policy = _opened(clock)
    router = ModelRouter([cand("a", ["one two three four"])], breakers=store, policy=policy)
    stream = router.stream(REQ)
    await anext(stream)
    await stream.aclose()
    assert await store.allow("a", policy) == (True, "half_open")


async def test_health_probes_count_only_consecutive_failures_and_survive_errors() -> None:
    outcomes = iter([False, True, False, True, False])

    class Flaky(ScriptedProvider):
        async def health(self) -> bool:
            return next(outcomes)

    class Broken(ScriptedProvider):
        async def health(self) -> bool:
            raise RuntimeError("probe crashed")

    store = LocalBreakerStore()
    router = ModelRouter(
        [Candidate("flaky", Flaky([], name="flaky")), Candidate("broken", Broken([], name="b"))],
        breakers=store,
        policy=BreakerPolicy(failure_threshold=2),
        health_check_interval_s=60,
    )
    for _ in range(5):
        health = await router.check_health()
        assert health["broken"] is False  # a crashing probe is just "unhealthy"
    snap = await store.snapshot()
    assert snap["flaky"][0]["state"] == "closed"  # never two failures in a row
    assert snap["broken"][0]["state"] == "open"


async def test_config_faults_without_a_status_do_not_trip_the_breaker() -> None:
    store = LocalBreakerStore()
    typo = ProviderError("unknown sampling parameter", provider="p", caller_fault=True)
    router = ModelRouter(
        [cand("p", [typo, typo]), cand("b", ["b1", "b2"])],
        breakers=store,
        policy=BreakerPolicy(failure_threshold=1),
    )
    for _ in range(2):
        completion = await router.complete(REQ)
        assert completion.route[0]["breaker"].startswith("closed (caller's fault")
    assert (await store.snapshot())["p"][0]["state"] == "closed"
