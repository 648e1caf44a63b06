"""API keys: made, hashed, looked up, and checked against what a request does.

- ``new_key()`` makes a token (``am_`` + 32 random bytes, URL-safe) and the hash the
  server keeps (``sha256:<hex>``); the token is shown once and stored nowhere.
- ``KeyRing`` holds the keys of ``spec.auth`` (runtime.yaml) and of its ``keys_env``
  variable; ``authenticate`` turns a bearer token into its ``ApiKey`` (or
  ``Unauthenticated``), looked up by its hash.
- ``ApiKey.require(action, agent)`` raises ``Forbidden`` unless the key's actions
  and agents (by name, ``*`` or namespace) cover it.  ``admin`` covers everything.
- A key's sessions are its own: ``session_owner`` is the prefix its session ids are
  stored under (``<key id>@``), so a key can neither read nor resume another key's
  session, whatever id it sends.  Open servers and admin keys use the ids as sent.

No Ray here: the gateway's middleware (``serve/auth.py``) and the CLI use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from astromesh_ray.core.context import ANONYMOUS, Caller
from astromesh_ray.errors import ConfigError, Forbidden, Unauthenticated
from astromesh_ray.spec.auth import ACTIONS, ApiKeySpec, AuthSpec, RateLimitSpec

TOKEN_PREFIX = "am_"
OWNER_SEPARATOR = "@"


def hash_key(token: str) -> str:
    """What the server stores of ``token``."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A new token and its hash."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_key(token)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key's identity and scopes (``spec`` is None for the open server's
    anonymous caller, which may do everything)."""

    id: str
    actions: frozenset[str]
    agents: frozenset[str]
    namespaces: frozenset[str]
    rate_limit: RateLimitSpec | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.actions

    @property
    def caller(self) -> Caller:
        """Who the runs this key starts belong to."""
        if self.id == ANONYMOUS.id:
            return ANONYMOUS
        return Caller(self.id, tuple(sorted(self.actions)))

    @property
    def session_owner(self) -> str | None:
        """The prefix of this key's stored session ids (None: the ids as sent)."""
        if self.admin or self.id == ANONYMOUS.id:
            return None
        return self.id + OWNER_SEPARATOR

    def sees(self, agent: str, namespace: str | None) -> bool:
        """Whether the key covers agent ``agent`` (of ``namespace``) at all."""
        return (
            self.admin
            or "*" in self.agents
            or agent in self.agents
            or (namespace is not None and namespace in self.namespaces)
        )

    def allows(
        self, action: str | None, agent: str | None = None, namespace: str | None = None
    ) -> bool:
        """Whether the key may do ``action`` (None: anything) on ``agent`` (None: no
        agent in particular)."""
        if self.admin:
            return True
        if action is not None and action not in self.actions:
            return False
        return agent is None or self.sees(agent, namespace)

    def require(
        self, action: str | None, agent: str | None = None, namespace: str | None = None
    ) -> None:
        """``Forbidden`` unless the key may do ``action`` (on ``agent``)."""
        if self.allows(action, agent, namespace):
            return
        if action is not None and action not in self.actions:
            raise Forbidden(
                f"API key {self.id!r} may not {action.replace('_', ' ')}",
                hint="its actions: " + ", ".join(sorted(self.actions)),
                key_id=self.id,
                action=action,
            )
        raise Forbidden(
            f"API key {self.id!r} is not scoped to agent {agent!r}",
            hint="add the agent (or its namespace) to the key's agents or namespaces",
            key_id=self.id,
            agent=agent,
        )

    def own_session(self, session: str | None) -> str | None:
        """The stored id of the session the key calls ``session``."""
        owner = self.session_owner
        if session is None or owner is None or session.startswith(owner):
            return session  # (a stored id sent back: the same session)
        return owner + session

    def shown_session(self, stored: Any) -> Any:
        """The id the key knows a stored session by (the inverse of ``own_session``)."""
        owner = self.session_owner
        if owner is not None and isinstance(stored, str) and stored.startswith(owner):
            return stored[len(owner) :]
        return stored


OPEN = ApiKey(ANONYMOUS.id, frozenset(ACTIONS), frozenset({"*"}), frozenset())
"""The caller of a server with no keys: anonymous, allowed everything."""

_KEY_LIST = TypeAdapter(list[ApiKeySpec])


def _from_env(name: str, environ: Mapping[str, str]) -> list[ApiKeySpec]:
    raw = environ.get(name, "").strip()
    if not raw:
        return []
    try:
        data = json.loads(raw) if raw[:1] in "[{" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"${name} is neither JSON nor YAML: {type(exc).__name__}",
            hint="give a list of keys as in runtime.yaml spec.auth.keys",
        ) from None
    if isinstance(data, dict):
        data = [data]
    try:
        return _KEY_LIST.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(list)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"${name}: invalid API keys: {problems}",
            hint="each key needs id, hash (astromesh keys create) and agents or namespaces",
        ) from None


class KeyRing:
    """The API keys a gateway accepts; with none, the server is open."""

    def __init__(self, keys: Iterable[ApiKeySpec], default_limit: RateLimitSpec | None = None):
        self._by_hash: dict[str, ApiKey] = {}
        ids: set[str] = set()
        for spec in keys:
            if spec.id in ids:
                raise ConfigError(
                    f"two API keys have the id {spec.id!r}",
                    hint="ids name the owners of sessions and runs: keep them unique",
                )
            if spec.hash in self._by_hash:
                raise ConfigError(f"API keys {spec.id!r} and another have the same hash")
            ids.add(spec.id)
            self._by_hash[spec.hash] = ApiKey(
                spec.id,
                frozenset(spec.actions),
                frozenset(spec.agents),
                frozenset(spec.namespaces),
                spec.rate_limit or default_limit,
            )

    @classmethod
    def from_spec(cls, auth: AuthSpec, environ: Mapping[str, str] | None = None) -> KeyRing:
        """The keys of ``auth`` and of its ``keys_env`` variable (``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls([*auth.keys, *_from_env(auth.keys_env, env)], auth.rate_limit)

    @property
    def open(self) -> bool:
        return not self._by_hash

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key of an ``Authorization: Bearer <token>`` header value."""
        if self.open:
            return OPEN
        if not authorization:
            raise Unauthenticated(
                "this server needs an API key",
                hint="send Authorization: Bearer <key>",
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "the Authorization header is not a bearer token",
                hint="send Authorization: Bearer <key>",
            )
        # Looked up by the token's hash: timing reveals nothing of a stored token.
        key = self._by_hash.get(hash_key(token))
        if key is not None:
            return key
        raise Unauthenticated("unknown API key", hint="check the key, or create one")
