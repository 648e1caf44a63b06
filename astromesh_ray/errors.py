"""The error hierarchy shared by every layer (DESIGN.md §5).

Every error carries a stable ``code``, a human ``message`` and an optional ``hint``
saying what to do about it.  Errors cross process and actor boundaries as values:
``to_dict`` / ``from_dict`` round-trip them, and ``__reduce__`` keeps pickling exact,
so a ``ProviderError`` raised in a provider replica is re-raised as a
``ProviderError`` in the agent replica and mapped to HTTP 502 by the gateway.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AstromeshError(Exception):
    """Root of every error astromesh-ray raises on purpose."""

    code: ClassVar[str] = "astromesh_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.hint, self.details))

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the API returns: ``{code, message, hint}`` plus details."""
        body: dict[str, Any] = {"code": self.code, "message": self.message, "hint": self.hint}
        body.update({k: v for k, v in self.details.items() if _jsonable(v)})
        return body

    @staticmethod
    def from_dict(data: dict[str, Any]) -> AstromeshError:
        """Rebuild an error sent as a value (the inverse of ``to_dict``)."""
        cls = _BY_CODE.get(str(data.get("code")), AstromeshError)
        details = {k: v for k, v in data.items() if k not in ("code", "message", "hint")}
        return cls(str(data.get("message", "")), hint=data.get("hint"), **details)


def _rebuild(
    cls: type[AstromeshError], message: str, hint: str | None, details: dict[str, Any]
) -> AstromeshError:
    return cls(message, hint=hint, **details)


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, dict)) or value is None


class ConfigError(AstromeshError):
    """A mistake in a YAML file or a CLI argument, found at load time.

    ``issues`` lists every problem found (each with file, line, column, field path);
    the message renders them one per line.
    """

    code = "config_error"
    http_status = 500


class InvalidRequest(AstromeshError):
    """An HTTP request the API cannot accept (body shape, sizes, values)."""

    code = "invalid_request"
    http_status = 422


class AgentNotFound(AstromeshError):
    """The request names an agent that is not loaded."""

    code = "agent_not_found"
    http_status = 404


class ProviderError(AstromeshError):
    """An LLM backend failed: unreachable, refused, or answered garbage.

    ``details`` carries ``provider``, ``status`` (HTTP status or None) and
    ``retryable`` (whether the same call may succeed later or elsewhere).
    """

    code = "provider_error"
    http_status = 502

    @property
    def retryable(self) -> bool:
        return bool(self.details.get("retryable", False))


class ToolError(AstromeshError):
    """A tool could not be called: unknown name, bad arguments, or it raised."""

    code = "tool_error"
    http_status = 502


class GuardrailViolation(AstromeshError):
    """Input or output was blocked by a guardrail."""

    code = "guardrail_violation"
    http_status = 400


class BudgetExceeded(AstromeshError):
    """A cost or token budget ran out; ``details`` names the ``cap``, its ``scope``
    (turn, session, agent), ``limit``, ``spent``, ``unit`` (tokens, usd), and
    ``resets_at`` (ISO 8601, UTC; ``None``: never) with ``retry_after_s``."""

    code = "budget_exceeded"
    http_status = 429


class RunTimeout(AstromeshError):
    """A run went past its ``timeout_seconds``."""

    code = "run_timeout"
    http_status = 504


class RunError(AstromeshError):
    """A run failed; ``details`` carries ``run_id``, ``step`` and the partial ``trace``."""

    code = "run_error"
    http_status = 500


class RunLimitExceeded(RunError):
    """A run spent its ``max_iterations`` model calls (counted across its sub-runs)
    without answering; ``details`` carries the partial ``trace``."""

    code = "run_limit_exceeded"
    http_status = 504


_BY_CODE: dict[str, type[AstromeshError]] = {
    cls.code: cls
    for cls in (
        AstromeshError,
        ConfigError,
        InvalidRequest,
        AgentNotFound,
        ProviderError,
        ToolError,
        GuardrailViolation,
        BudgetExceeded,
        RunTimeout,
        RunError,
        RunLimitExceeded,
    )
}


class AgentUnavailable(AstromeshError):
    """The agent is loaded but its Serve application is missing, failed or unreachable."""

    code = "agent_unavailable"
    http_status = 503


_BY_CODE[AgentUnavailable.code] = AgentUnavailable


class GuardrailUnavailable(AstromeshError):
    """A guardrail could not check (its moderation endpoint, embedder or budget
    ledger failed): the text is not let through unchecked.  ``details`` carries
    ``guardrail`` and ``retryable``."""

    code = "guardrail_unavailable"
    http_status = 503


_BY_CODE[GuardrailUnavailable.code] = GuardrailUnavailable


class MemoryUnavailable(AstromeshError):
    """A memory backend (Redis, PostgreSQL, a vector store, an embedder) could not be
    reached or failed; ``details`` carries ``backend`` and ``retryable``.  Nothing was
    stored by the operation that raised it."""

    code = "memory_unavailable"
    http_status = 503


class MemoryNotFound(AstromeshError):
    """The memory a request names does not exist: a session the agent has not
    stored, or a kind of memory the agent does not declare."""

    code = "memory_not_found"
    http_status = 404


class MemoryConflict(AstromeshError):
    """The request would overwrite memory that exists (forking onto a session that
    already has turns)."""

    code = "memory_conflict"
    http_status = 409


_BY_CODE[MemoryUnavailable.code] = MemoryUnavailable
_BY_CODE[MemoryNotFound.code] = MemoryNotFound
_BY_CODE[MemoryConflict.code] = MemoryConflict


class RunNotFound(AstromeshError):
    """The request names a paused run that does not exist: unknown, already resumed
    (a decision is single-use), or expired."""

    code = "run_not_found"
    http_status = 404


class PipelineNotFound(AstromeshError):
    """The request names a RAG pipeline the configuration does not declare."""

    code = "pipeline_not_found"
    http_status = 404


_BY_CODE[RunNotFound.code] = RunNotFound
_BY_CODE[PipelineNotFound.code] = PipelineNotFound


# -- channels (serve/protocols/channels/) -------------------------------------------


class ChannelNotFound(AstromeshError):
    """The request names a channel the configuration does not declare."""

    code = "channel_not_found"
    http_status = 404


class ChannelUnauthorized(AstromeshError):
    """A delivery whose signature is missing or wrong: it is not from the platform
    (or not for this app), so nothing in it is run."""

    code = "channel_unauthorized"
    http_status = 401


class ChannelVerificationFailed(AstromeshError):
    """A subscription handshake whose mode or verify token is wrong."""

    code = "channel_verification_failed"
    http_status = 403


class ChannelUnavailable(AstromeshError):
    """The channel cannot take requests now: a secret's environment variable is not
    set in the gateway (the platform retries a delivery answered with an error, so
    nothing is lost).  The dedupe actor's client raises it too, for an actor it
    cannot reach; the webhook then fails open (``dedupe.py``)."""

    code = "channel_unavailable"
    http_status = 503


class ChannelDeliveryError(AstromeshError):
    """The platform's API refused or failed to take a reply; ``details`` carries
    ``status`` (HTTP status, or None when it could not be reached)."""

    code = "channel_delivery_failed"
    http_status = 502


class Unauthenticated(AstromeshError):
    """The request carries no API key, or one the server does not know."""

    code = "unauthenticated"
    http_status = 401


class Forbidden(AstromeshError):
    """The API key is valid but its scopes do not cover the agent or the action."""

    code = "forbidden"
    http_status = 403


class RateLimited(AstromeshError):
    """The API key made more requests than its rate limit allows in the window
    (``retry_after_s`` says when to try again)."""

    code = "rate_limited"
    http_status = 429


class RateLimiterUnavailable(AstromeshError):
    """The cluster-wide rate limiter cannot be reached: the request is refused, not
    let through uncounted."""

    code = "rate_limiter_unavailable"
    http_status = 503


class TraceNotFound(AstromeshError):
    """The trace is not among this gateway replica's recent traces."""

    code = "trace_not_found"
    http_status = 404


for _cls in (
    ChannelNotFound,
    ChannelUnauthorized,
    ChannelVerificationFailed,
    ChannelUnavailable,
    ChannelDeliveryError,
    TraceNotFound,
    Unauthenticated,
    Forbidden,
    RateLimited,
    RateLimiterUnavailable,
):
    _BY_CODE[_cls.code] = _cls
