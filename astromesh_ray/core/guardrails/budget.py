"""``cost_limit`` budgets: caps on tokens and USD per turn, per session and per agent
clock hour or UTC day, checked around every model call over a shared ``Ledger``.

``BudgetPolicy`` is built once per agent from its ``cost_limit`` specs (every one of
the input and output lists, merged: the lowest ``block`` limit of each cap wins,
every ``warn``/``log`` limit is kept).  ``for_run`` gives a cheap ``RunBudget`` per run;
the engine calls, around each model call::

    hold = await budget.before(request, provider)   # may raise BudgetExceeded
    try:
        completion = await provider.complete(hold.request)
    except BaseException:
        await budget.release(hold)
        raise
    warnings = await budget.after(hold, completion.usage)   # may raise BudgetExceeded
    ...
    await budget.end()   # once, when the top-level turn ends

**The estimate.**  A call reserves ``prompt + allowance`` tokens on every key it counts
against, and the USD that costs at the provider's price:

- *prompt*: an upper-end count without a tokenizer: ASCII characters count a third of
  a token each (text averages about four), other characters one token each (CJK,
  emoji), over every message's content, name and tool calls (name and JSON
  arguments), every tool schema offered (name, description, JSON parameters) and the
  response schema; plus 4 tokens per message and tool call, 8 per tool, and 3;
- *allowance* (output tokens): ``parameters["max_tokens"]``, else
  ``DEFAULT_OUTPUT_TOKENS``, lowered to what the tightest ``block`` cap leaves after the
  prompt (token caps; cost caps too when the price is known), so one call cannot blow
  a cap.  When it is lowered, the request's ``max_tokens`` is set to it (and the hold
  carries a warning); with nothing left (not one output token) ``before`` raises
  ``BudgetExceeded`` and the model is not called;
- *price*: for a ``ModelRouter`` the most expensive of its candidates (the highest
  input and the highest output price among them), since any of them may answer.  If
  one candidate's price is unknown, cost caps are checked with actual cost only:
  nothing is estimated, a call is refused only once a cost cap is spent, and
  ``after`` compares the actual ``Usage.cost_usd``.

**Keys.**  ``turn:{agent}:{run_id}`` (every task of a run, on any replica, shares it;
dropped by ``end``), ``session:{agent}:{session_id}`` (kept ``session_ttl_s`` after its
last use), ``agent:{agent}:hour:{window start}`` and ``agent:{agent}:day:{...}`` (clock
hours and days in UTC; forgotten when the window ends).  A run with no session id
counts session caps per run (key ``session:{agent}:run:{run_id}``, dropped with the
turn).  Hour and day spend is charged to the window the call started in.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from astromesh_ray.core.guardrails.ledger import (
    METRICS,
    Ask,
    Ledger,
    Line,
    Metric,
    Refusal,
    SqliteLedger,
)
from astromesh_ray.core.messages import CompletionRequest, Usage
from astromesh_ray.core.pricing import Price
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.router import ModelRouter
from astromesh_ray.errors import BudgetExceeded
from astromesh_ray.spec.guardrails import COST_CAPS, CostLimitSpec

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "BudgetPolicy",
    "Cap",
    "Hold",
    "Ledger",
    "RunBudget",
    "SqliteLedger",
    "estimate_prompt_tokens",
    "provider_price",
]

Period = Literal["turn", "session", "hour", "day"]
Scope = Literal["turn", "session", "agent"]
CapAction = Literal["block", "warn", "log"]

DEFAULT_OUTPUT_TOKENS = 4096
"""The output allowance of a call that sets no ``max_tokens``."""
HOLD_TTL_S = 600.0
"""How long a reservation outlives a call that never settles (a replica that died)."""
TURN_TTL_S = 24 * 3600.0
"""How long a turn key outlives a turn that never ``end``s."""
SESSION_TTL_S = 90 * 24 * 3600.0
"""How long a session's spend is kept after its last model call."""

_WINDOW_S: dict[Period, float] = {"hour": 3600.0, "day": 86400.0}
_SCOPES: dict[Period, Scope] = {
    "turn": "turn",
    "session": "session",
    "hour": "agent",
    "day": "agent",
}


@dataclass(frozen=True, slots=True)
class Cap:
    """One cap of a ``cost_limit`` spec: its field ``name``, what it counts and how
    much, and what passing it does."""

    name: str
    period: Period
    metric: Metric
    limit: float
    action: CapAction

    @property
    def scope(self) -> Scope:
        return _SCOPES[self.period]

    @staticmethod
    def parse(name: str, limit: float, action: CapAction) -> Cap:
        """The cap of field ``name`` (``max_{tokens|cost}_per_{period}``)."""
        _, what, _, period = name.split("_")
        metric: Metric = "tokens" if what == "tokens" else "usd"
        return Cap(name, period, metric, float(limit), action)  # type: ignore[arg-type]


@dataclass
class Hold:
    """A reservation for one model call: ``request`` is the one to send (its
    ``max_tokens`` lowered when a cap leaves less), ``warnings`` what ``before``
    noticed.  The rest is for ``after`` and ``release``."""

    request: CompletionRequest
    warnings: list[str] = field(default_factory=list)
    id: str = ""
    lines: tuple[Line, ...] = ()
    periods: tuple[Period, ...] = ()
    estimate_tokens: int = 0
    estimate_usd: float | None = None
    settled: bool = False


class BudgetPolicy:
    """An agent's merged caps over a ``Ledger``; see the module docstring."""

    def __init__(
        self,
        agent: str,
        caps: Sequence[Cap],
        ledger: Ledger,
        *,
        clock: Callable[[], float] = time.time,
        hold_ttl_s: float = HOLD_TTL_S,
        turn_ttl_s: float = TURN_TTL_S,
        session_ttl_s: float = SESSION_TTL_S,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    ) -> None:
        self.agent = agent
        self.caps = tuple(caps)
        self.ledger = ledger
        self.clock = clock
        self.hold_ttl_s = hold_ttl_s
        self.turn_ttl_s = turn_ttl_s
        self.session_ttl_s = session_ttl_s
        self.default_output_tokens = default_output_tokens
        # The block limit of each (period, metric): the lowest, as it is the one hit first.
        self.blocks: dict[tuple[Period, Metric], Cap] = {}
        for cap in self.caps:
            if cap.action == "block":
                known = self.blocks.get((cap.period, cap.metric))
                if known is None or cap.limit < known.limit:
                    self.blocks[(cap.period, cap.metric)] = cap
        self.periods: tuple[Period, ...] = tuple(
            p for p in ("turn", "session", "hour", "day") if any(c.period == p for c in self.caps)
        )

    @staticmethod
    def from_specs(
        agent: str, specs: Sequence[CostLimitSpec], ledger: Ledger, **options: Any
    ) -> BudgetPolicy | None:
        """The policy of ``agent``'s ``cost_limit`` specs (several are merged);
        ``None`` when they set no cap.  ``options`` go to the constructor."""
        caps: list[Cap] = []
        for spec in specs:
            for name in COST_CAPS:
                limit = getattr(spec, name)
                if limit is not None:
                    cap = Cap.parse(name, limit, spec.action)
                    if cap not in caps:
                        caps.append(cap)
        if not caps:
            return None
        return BudgetPolicy(agent, caps, ledger, **options)

    def for_run(self, run_id: str, session_id: str | None) -> RunBudget:
        """The budget of one run; cheap: it holds no spend of its own (the turn's
        spend is in the ledger, shared by the run's tasks on every replica)."""
        return RunBudget(self, run_id, session_id)

    def warn_caps(self, period: Period, metric: Metric) -> list[Cap]:
        """The ``warn``/``log`` caps on ``(period, metric)``."""
        return [
            c
            for c in self.caps
            if c.period == period and c.metric == metric and c.action != "block"
        ]

    async def aclose(self) -> None:
        await self.ledger.aclose()


class RunBudget:
    """One run's checks around its model calls; see the module docstring."""

    def __init__(self, policy: BudgetPolicy, run_id: str, session_id: str | None) -> None:
        self.policy = policy
        self.run_id = run_id
        self.session_id = session_id
        self._open: dict[str, Hold] = {}

    # -- keys ------------------------------------------------------------------------

    def key(self, period: Period, now: float) -> str:
        """The ledger key ``period``'s caps count on for this run at ``now``."""
        agent = _part(self.policy.agent)
        if period == "turn":
            return f"turn:{agent}:{_part(self.run_id)}"
        if period == "session":
            if self.session_id is None:
                return f"session:{agent}:run:{_part(self.run_id)}"
            return f"session:{agent}:{_part(self.session_id)}"
        return f"agent:{agent}:{period}:{_iso(_window_start(period, now))}"

    def _lines(self, now: float) -> tuple[tuple[Line, ...], tuple[Period, ...]]:
        policy = self.policy
        lines: list[Line] = []
        periods: list[Period] = []
        for period in policy.periods:
            key = self.key(period, now)
            if period in _WINDOW_S:
                expires = _window_start(period, now) + _WINDOW_S[period]
            elif period == "session" and self.session_id is not None:
                expires = now + policy.session_ttl_s
            else:
                expires = now + policy.turn_ttl_s
            for metric in METRICS:  # both metrics, whichever the caps name
                block = policy.blocks.get((period, metric))
                lines.append(
                    Line(
                        key=key,
                        metric=metric,
                        limit=block.limit if block else None,
                        cap=block.name if block else None,
                        expires_at=expires,
                    )
                )
                periods.append(period)
        return tuple(lines), tuple(periods)

    # -- around a model call -----------------------------------------------------

    async def before(self, request: CompletionRequest, provider: Provider) -> Hold:
        """Reserve the call's estimate; raises ``BudgetExceeded`` when a ``block``
        cap leaves no room for it.  Send the returned hold's ``request``."""
        policy = self.policy
        now = policy.clock()
        price = provider_price(provider)
        prompt = estimate_prompt_tokens(request)
        requested = _positive_int(request.parameters.get("max_tokens"))
        wanted = requested or policy.default_output_tokens
        lines, periods = self._lines(now)
        ask = Ask(
            lines=lines,
            base={
                "tokens": float(prompt),
                "usd": price.input_per_mtok * prompt / 1e6 if price else 0.0,
            },
            per_unit={"tokens": 1.0, "usd": price.output_per_mtok / 1e6 if price else 0.0},
            max_units=wanted,
            min_units=1,
            hold_ttl_s=policy.hold_ttl_s,
        )
        hold_id = uuid.uuid4().hex
        grant = await policy.ledger.reserve(hold_id, ask)
        if grant.refused is not None:
            period = periods[lines.index(grant.refused.line)]
            raise self._refused(grant.refused, period, now)
        hold = Hold(
            request=request,
            id=hold_id,
            lines=lines,
            periods=periods,
            estimate_tokens=prompt + grant.units,
            estimate_usd=price.cost(Usage(prompt, grant.units)) if price else None,
        )
        if grant.binding is not None and grant.units < wanted:
            parameters = {**request.parameters, "max_tokens": grant.units}
            hold.request = replace(request, parameters=parameters)
            hold.warnings.append(
                f"max_tokens lowered to {grant.units:,} (from {wanted:,}) by budget "
                f"{grant.binding.cap} {self._where(periods[lines.index(grant.binding)])}"
            )
        self._open[hold_id] = hold
        return hold

    async def after(self, hold: Hold, usage: Usage) -> list[str]:
        """Settle ``hold`` with the call's actual ``usage``.  Raises
        ``BudgetExceeded`` when the spend is now over a ``block`` cap (the answer is
        spent, but the run ends); returns a warning for each ``warn``/``log`` cap this
        call passed.  Settling a hold twice does nothing."""
        if hold.settled:
            return []
        hold.settled = True
        self._open.pop(hold.id, None)
        actual: dict[Metric, float] = {
            "tokens": float(usage.total_tokens),
            "usd": float(usage.cost_usd),
        }
        standings = await self.policy.ledger.settle(hold.id, hold.lines, actual)
        now = self.policy.clock()
        warnings: list[str] = []
        over: BudgetExceeded | None = None
        for standing, period in zip(standings, hold.periods, strict=True):
            line = standing.line
            if over is None and line.limit is not None and standing.after > line.limit:
                over = self._over(line, period, standing.after, now)
            for cap in self.policy.warn_caps(period, line.metric):
                if standing.before <= cap.limit < standing.after:
                    warnings.append(
                        f"budget {cap.name} passed ({cap.action}): "
                        f"{_amount(standing.after, cap.metric, unit=False)} of "
                        f"{_amount(cap.limit, cap.metric)} spent {self._where(period)}"
                    )
        if over is not None:
            raise over
        return warnings

    async def release(self, hold: Hold) -> None:
        """Give back ``hold`` of a call that failed (no usage to settle)."""
        if not hold.settled:
            hold.settled = True
            self._open.pop(hold.id, None)
            await self.policy.ledger.settle(hold.id, hold.lines, {})

    async def end(self) -> None:
        """The top-level turn ended: release holds still open, drop the turn key (and
        the per-run session key of a run without a session)."""
        for hold in list(self._open.values()):
            await self.release(hold)
        now = self.policy.clock()
        keys = [self.key("turn", now)]
        if self.session_id is None:
            keys.append(self.key("session", now))
        await self.policy.ledger.drop(keys)

    # -- errors ------------------------------------------------------------------------

    def _where(self, period: Period) -> str:
        if period == "turn":
            return "in this turn"
        if period == "session":
            if self.session_id is None:
                return "in this run (no session id)"
            return f"in session {self.session_id!r}"
        return f"by agent {self.policy.agent!r} " + ("this hour" if period == "hour" else "today")

    def _refused(self, refusal: Refusal, period: Period, now: float) -> BudgetExceeded:
        line = refusal.line
        held = (
            f" ({_amount(refusal.reserved, line.metric)} more held by calls in flight)"
            if refusal.reserved > 0
            else ""
        )
        tail = (
            f"{held}, and the next model call needs at least {_amount(refusal.needed, line.metric)}"
        )
        return self._over(line, period, refusal.spent, now, tail)

    def _over(
        self, line: Line, period: Period, spent: float, now: float, tail: str = ""
    ) -> BudgetExceeded:
        cap, limit = line.cap or "", float(line.limit or 0.0)
        resets_at: str | None = None
        retry_after_s: int | None = None
        if period in _WINDOW_S:
            end = _window_start(period, now) + _WINDOW_S[period]
            resets_at = _iso(end)
            retry_after_s = max(1, math.ceil(end - now))
            every = "hourly" if period == "hour" else "daily"
            hint = (
                f"the agent's {every} budget resets at {resets_at} "
                f"(in {retry_after_s:,} s); or raise {cap}"
            )
        elif period == "session":
            hint = f"start a new session, or raise {cap}"
            if self.session_id is None:
                hint = f"the run has no session id, so session caps count per run; raise {cap}"
        else:
            hint = f"ask for less in one turn (fewer tool rounds, shorter input), or raise {cap}"
        return BudgetExceeded(
            f"budget {cap} exceeded: {_amount(spent, line.metric, unit=False)} of "
            f"{_amount(limit, line.metric)} spent {self._where(period)}{tail}",
            hint=hint + " in the agent's cost_limit guardrail",
            cap=cap,
            scope=_SCOPES[period],
            limit=_value(limit, line.metric),
            spent=_value(spent, line.metric),
            unit=line.metric,
            resets_at=resets_at,
            retry_after_s=retry_after_s,
            agent=self.policy.agent,
            session_id=self.session_id,
        )


# -- estimates -----------------------------------------------------------------------


def provider_price(provider: Provider) -> Price | None:
    """The price a budget assumes for ``provider``: for a router, the highest input
    and the highest output price of its candidates (``None`` if one is unknown);
    otherwise its ``price`` attribute, if it has one."""
    if isinstance(provider, ModelRouter):
        prices = [c.price for c in provider.candidates]
        known = [p for p in prices if p is not None]
        if len(known) < len(prices):
            return None
        return Price(max(p.input_per_mtok for p in known), max(p.output_per_mtok for p in known))
    price = getattr(provider, "price", None)
    return price if isinstance(price, Price) else None


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """An upper-end count of the prompt's tokens (the rule: module docstring)."""
    tokens = 3
    for message in request.messages:
        tokens += 4 + _text_tokens(message.content) + _text_tokens(message.name)
        for call in message.tool_calls:
            tokens += 4 + _text_tokens(call.name)
            tokens += _text_tokens(call.invalid_arguments or json.dumps(call.arguments))
    for tool in request.tools:
        tokens += 8 + _text_tokens(tool.name) + _text_tokens(tool.description)
        tokens += _text_tokens(json.dumps(tool.parameters))
    if request.response_schema is not None:
        tokens += _text_tokens(json.dumps(request.response_schema))
    return tokens


def _text_tokens(text: str | None) -> int:
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / 3) + (len(text) - ascii_chars)


# -- small helpers -------------------------------------------------------------------


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        return None
    return int(value)


def _window_start(period: Period, now: float) -> float:
    size = _WINDOW_S[period]
    return math.floor(now / size) * size  # epoch-aligned: UTC hours and days


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _part(text: str) -> str:
    # Key parts are joined with ':'; escape it so "a:b" + "c" never equals "a" + "b:c".
    return text.replace("%", "%25").replace(":", "%3A")


def _value(amount: float, metric: Metric) -> int | float:
    return round(amount) if metric == "tokens" else round(amount, 8)


def _amount(amount: float, metric: Metric, *, unit: bool = True) -> str:
    if metric == "tokens":
        return f"{round(amount):,} tokens" if unit else f"{round(amount):,}"
    return f"${amount:,.4f}" if amount >= 0.01 else f"${amount:.6f}"
