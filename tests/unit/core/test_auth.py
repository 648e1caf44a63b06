"""API keys (``core/auth.py``, ``spec/auth.py``) and the sliding windows of rate
limits (``core/rate_window.py``)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from astromesh_ray.core.auth import OPEN, KeyRing, hash_key, new_key
from astromesh_ray.core.rate_window import Windows
from astromesh_ray.errors import ConfigError, Forbidden, Unauthenticated
from astromesh_ray.spec.auth import ApiKeySpec, AuthSpec, RateLimitSpec


def _key(id: str, token: str, **scopes: object) -> ApiKeySpec:
    return ApiKeySpec.model_validate({"id": id, "hash": hash_key(token), **scopes})


def test_a_new_key_is_random_and_only_its_hash_is_kept() -> None:
    token, digest = new_key()
    other, _ = new_key()
    assert token.startswith("am_") and len(token) > 40 and token != other
    assert digest == hash_key(token) and token not in digest
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64


def test_authenticate_refuses_missing_malformed_and_unknown_keys() -> None:
    ring = KeyRing([_key("alice", "tok-a", agents=["a"])])
    for header in (None, "", "tok-a", "Basic dG9rLWE=", "Bearer ", "Bearer tok-b"):
        with pytest.raises(Unauthenticated):
            ring.authenticate(header)
    key = ring.authenticate("Bearer tok-a")
    assert key.id == "alice" and key.caller.id == "alice"
    assert ring.authenticate("bearer  tok-a ").id == "alice"  # scheme is case-insensitive


def test_an_open_ring_lets_everyone_in_as_anonymous() -> None:
    ring = KeyRing([])
    assert ring.open and ring.authenticate(None) is OPEN
    assert OPEN.allows("admin") and OPEN.session_owner is None


def test_scopes_by_action_agent_namespace_and_wildcard() -> None:
    ring = KeyRing(
        [
            _key("runner", "t1", agents=["a"]),
            _key("sales", "t2", namespaces=["sales"], actions=["run", "read_memory"]),
            _key("all", "t3", agents=["*"], actions=["run", "erase_memory"]),
            _key("root", "t4", actions=["admin"]),
        ]
    )
    runner, sales, every, root = (ring.authenticate(f"Bearer t{i}") for i in range(1, 5))
    runner.require("run", "a", "default")
    with pytest.raises(Forbidden, match="not scoped to agent 'b'"):
        runner.require("run", "b", "default")
    with pytest.raises(Forbidden, match="may not read memory"):
        runner.require("read_memory", "a", "default")
    sales.require("read_memory", "quote", "sales")
    with pytest.raises(Forbidden):
        sales.require("run", "quote", "support")
    every.require("erase_memory", "anything", None)
    with pytest.raises(Forbidden):
        every.require("admin")
    root.require("admin")
    root.require("erase_memory", "b", "x")
    # None: any action, this agent.
    runner.require(None, "a", None)
    with pytest.raises(Forbidden):
        runner.require(None, "b", None)


def test_a_keys_sessions_are_stored_under_its_own_prefix() -> None:
    ring = KeyRing([_key("alice", "ta", agents=["a"]), _key("root", "tr", actions=["admin"])])
    alice, root = ring.authenticate("Bearer ta"), ring.authenticate("Bearer tr")
    assert alice.own_session("s1") == "alice@s1"
    # A stored id sent back is the same session, not another level of prefix.
    assert alice.own_session("alice@s1") == "alice@s1"
    # Whatever id alice sends, it stays inside her prefix (bob's session included).
    assert alice.own_session("bob@s1") == "alice@bob@s1"
    assert alice.shown_session("alice@s1") == "s1"
    assert alice.own_session(None) is None
    # Admins (and the open server) use ids as sent.
    assert root.own_session("alice@s1") == "alice@s1" and root.session_owner is None


def test_keys_from_the_environment_as_json_or_yaml() -> None:
    entry = {"id": "env-key", "hash": hash_key("te"), "agents": ["a"]}
    auth = AuthSpec(keys=[_key("file-key", "tf", agents=["a"])])
    for raw in (json.dumps([entry]), f"- id: env-key\n  hash: {entry['hash']}\n  agents: [a]\n"):
        ring = KeyRing.from_spec(auth, {"ASTROMESH_API_KEYS": raw})
        assert len(ring) == 2 and ring.authenticate("Bearer te").id == "env-key"
    with pytest.raises(ConfigError, match=r"\$ASTROMESH_API_KEYS: invalid API keys: 0.hash"):
        KeyRing.from_spec(auth, {"ASTROMESH_API_KEYS": json.dumps([{**entry, "hash": "x"}])})
    with pytest.raises(ConfigError, match="neither JSON nor YAML"):
        KeyRing.from_spec(auth, {"ASTROMESH_API_KEYS": "[not json"})
    # The same id in the file and the environment: refused, ids own sessions.
    dup = json.dumps([{**entry, "id": "file-key"}])
    with pytest.raises(ConfigError, match="two API keys have the id 'file-key'"):
        KeyRing.from_spec(auth, {"ASTROMESH_API_KEYS": dup})


def test_key_specs_are_checked() -> None:
    with pytest.raises(ValidationError, match="names no agents or namespaces"):
        ApiKeySpec.model_validate({"id": "k", "hash": hash_key("t")})
    with pytest.raises(ValidationError, match="hash"):
        ApiKeySpec.model_validate({"id": "k", "hash": "sha256:abc", "agents": ["*"]})
    with pytest.raises(ValidationError, match="actions"):
        ApiKeySpec.model_validate(
            {"id": "k", "hash": hash_key("t"), "agents": ["*"], "actions": ["delete"]}
        )
    with pytest.raises(ValidationError, match="same id"):
        AuthSpec(keys=[_key("k", "t1", agents=["*"]), _key("k", "t2", agents=["*"])])
    with pytest.raises(ValidationError, match="allow_credentials"):
        AuthSpec.model_validate({"cors": {"allow_origins": ["*"], "allow_credentials": True}})


def test_a_keys_limit_defaults_to_the_auth_block() -> None:
    auth = AuthSpec(
        keys=[
            _key("own", "t1", agents=["*"], rate_limit={"requests": 2, "window_s": 5}),
            _key("default", "t2", agents=["*"]),
        ],
        rate_limit=RateLimitSpec(requests=10),
    )
    ring = KeyRing.from_spec(auth, {})
    assert ring.authenticate("Bearer t1").rate_limit == RateLimitSpec(requests=2, window_s=5)
    assert ring.authenticate("Bearer t2").rate_limit == RateLimitSpec(requests=10)


def test_sliding_windows_admit_at_most_the_limit_and_say_when_to_retry() -> None:
    now = [100.0]
    windows = Windows(clock=lambda: now[0])
    admitted = [windows.hit("k", 3, 10).allowed for _ in range(5)]
    assert admitted == [True, True, True, False, False]
    refused = windows.hit("k", 3, 10)
    assert refused.remaining == 0 and refused.retry_after_s == pytest.approx(10.0)
    assert windows.hit("other", 3, 10).allowed  # per key
    now[0] += 4.0
    assert windows.hit("k", 3, 10).retry_after_s == pytest.approx(6.0)
    now[0] += 6.0  # the first three left the window
    assert [windows.hit("k", 3, 10).allowed for _ in range(4)] == [True, True, True, False]


def test_idle_keys_leave_the_table() -> None:
    now = [0.0]
    windows = Windows(clock=lambda: now[0])
    for i in range(20):
        windows.hit(f"k{i}", 1, 1)
    now[0] += 5.0
    for _ in range(10):
        windows.hit("busy", 100, 1)
    assert len(windows) < 5
