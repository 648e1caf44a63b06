from __future__ import annotations

from astromesh_ray.core.breaker import (
    BreakerPolicy,
    CircuitBreakers,
    ManualClock,
    find,
    most_severe,
)

STRICT = BreakerPolicy(failure_threshold=1, cooldown_s=60)
LENIENT = BreakerPolicy(failure_threshold=3, cooldown_s=10)


def test_each_policy_has_its_own_breaker_for_the_same_provider() -> None:
    clock = ManualClock()
    breakers = CircuitBreakers(clock=clock)
    assert breakers.failure("p", STRICT) == "open"
    assert breakers.failure("p", LENIENT) == "closed"  # not the strict agent's breaker
    assert breakers.allow("p", STRICT) == (False, "open")
    assert breakers.allow("p", LENIENT) == (True, "closed")
    clock.advance(10)
    # Each keeps its own cooldown, too: the later caller does not rewrite the policy.
    assert breakers.allow("p", STRICT) == (False, "open")
    entries = breakers.snapshot()["p"]
    assert find(entries, STRICT) == {
        "state": "open",
        "consecutive_failures": 1,
        "trips": 1,
        "cooldown_remaining_s": 50.0,
        "failure_threshold": 1,
        "cooldown_s": 60,
        "last_error": None,
    }
    lenient = find(entries, LENIENT)
    assert lenient is not None and lenient["state"] == "closed"
    assert lenient["consecutive_failures"] == 1


def test_most_severe_prefers_open_then_half_open_then_failures() -> None:
    closed = {"state": "closed", "consecutive_failures": 2}
    quiet = {"state": "closed", "consecutive_failures": 0}
    half = {"state": "half_open", "consecutive_failures": 1}
    opened = {"state": "open", "consecutive_failures": 1}
    assert most_severe([quiet, closed]) is closed
    assert most_severe([closed, half, quiet]) is half
    assert most_severe([half, opened, closed]) is opened
    assert most_severe([]) is None


def test_health_results_count_only_consecutive_failures() -> None:
    breakers = CircuitBreakers(clock=ManualClock())
    policy = BreakerPolicy(failure_threshold=2, cooldown_s=60)
    assert breakers.health("p", policy, healthy=False) == "closed"
    assert breakers.health("p", policy, healthy=True) == "closed"  # resets the count
    assert breakers.status("p", policy).consecutive_failures == 0
    breakers.health("p", policy, healthy=False)
    assert breakers.health("p", policy, healthy=False) == "open"
    # A healthy probe does not close an open breaker: a real request decides.
    assert breakers.health("p", policy, healthy=True) == "open"
    assert breakers.status("p", policy).last_error == "health check failed"
