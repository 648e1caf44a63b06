"""``spec.auth`` of runtime.yaml: API keys, their scopes and rate limits, and CORS.

    spec:
      auth:
        keys:
          - id: ci-bot                  # shown in logs, traces and errors (never the key)
            hash: sha256:9f86d0...      # `astromesh keys create` prints it
            agents: [support-agent]     # or "*"; and/or namespaces: [sales]
            actions: [run, read_memory] # run | read_memory | erase_memory | admin
            rate_limit: {requests: 60, window_s: 60}
        keys_env: ASTROMESH_API_KEYS    # more keys, the same list as JSON or YAML
        rate_limit: {requests: 600, window_s: 60}   # for keys that declare none
        cors: {allow_origins: ["https://app.example.com"]}

A key is stored hashed only: the server keeps ``sha256:<hex>`` of the token, which
is 32 random bytes, so a leaked config does not leak keys.  With no key at all the
server is open, and answers loopback clients only (``insecure`` lifts that).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from astromesh_ray.spec.base import StrictModel

Action = Literal["run", "read_memory", "erase_memory", "admin"]
ACTIONS: tuple[Action, ...] = ("run", "read_memory", "erase_memory", "admin")
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
KEY_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"
DEFAULT_KEYS_ENV = "ASTROMESH_API_KEYS"


def _run_only() -> list[Action]:
    return ["run"]


class RateLimitSpec(StrictModel):
    """At most ``requests`` requests per ``window_s`` seconds (a sliding window),
    counted across every gateway replica of the cluster."""

    requests: int = Field(ge=1, le=10_000_000, description="Requests allowed per window.")
    window_s: float = Field(default=60.0, gt=0, le=86_400, description="Window in seconds.")


class ApiKeySpec(StrictModel):
    """One API key: its id, the hash of its token, and what it may do."""

    id: str = Field(
        pattern=KEY_ID_PATTERN,
        description="The key's name (1-32 letters, digits and . _ -): shown in logs, "
        "traces and errors in place of the key, and owner of its sessions and runs.",
    )
    hash: str = Field(
        pattern=KEY_HASH_PATTERN,
        description="sha256:<64 hex digits> of the token (`astromesh keys create`).",
    )
    description: str | None = Field(default=None, max_length=500, description="Free text.")
    agents: list[str] = Field(
        default_factory=list, description='Agents the key may use by name, or "*" for all.'
    )
    namespaces: list[str] = Field(
        default_factory=list, description="Agents the key may use by metadata.namespace."
    )
    actions: list[Action] = Field(
        default_factory=_run_only,
        min_length=1,
        description="run (turns, paused runs, A2A, AG-UI, WebSocket, OpenAI API), "
        "read_memory (history, sessions, search, episodes, fork), erase_memory (DELETE), "
        "admin (everything, every agent, every session; providers, RAG ingest).",
    )
    rate_limit: RateLimitSpec | None = Field(
        default=None, description="This key's own limit (default: spec.auth.rate_limit)."
    )

    @model_validator(mode="after")
    def _scoped(self) -> ApiKeySpec:
        if "admin" not in self.actions and not (self.agents or self.namespaces):
            raise ValueError(
                f"key {self.id!r} names no agents or namespaces: it could do nothing "
                '(give agents: ["*"] for every agent)'
            )
        return self


class CorsSpec(StrictModel):
    """Cross-origin requests from browsers: off unless origins are listed."""

    allow_origins: list[str] = Field(
        default_factory=list, description='Origins allowed (e.g. "https://app.example.com").'
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "DELETE"], description="Methods allowed."
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "traceparent", "accept"],
        description="Request headers allowed.",
    )
    allow_credentials: bool = Field(default=False, description="Allow cookies/credentials.")
    max_age_s: int = Field(default=600, ge=0, le=86_400, description="Preflight cache time.")

    @model_validator(mode="after")
    def _no_wildcard_credentials(self) -> CorsSpec:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError('allow_credentials cannot be used with allow_origins "*"')
        return self


class AuthSpec(StrictModel):
    """``spec.auth``: who may call the API."""

    keys: list[ApiKeySpec] = Field(default_factory=list, description="API keys.")
    keys_env: str = Field(
        default=DEFAULT_KEYS_ENV,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable of the gateway holding more keys: the same "
        "list as `keys`, as JSON or YAML.",
    )
    rate_limit: RateLimitSpec | None = Field(
        default=None, description="Limit of the keys that declare none (default: none)."
    )
    insecure: bool = Field(
        default=False,
        description="With no keys, answer clients beyond loopback too (`serve --insecure`).",
    )
    cors: CorsSpec = Field(default_factory=CorsSpec, description="CORS (off by default).")

    @model_validator(mode="after")
    def _unique(self) -> AuthSpec:
        ids = [k.id for k in self.keys]
        hashes = [k.hash for k in self.keys]
        for what, values in (("id", ids), ("hash", hashes)):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"two keys have the same {what}: {', '.join(dup)}")
        return self
