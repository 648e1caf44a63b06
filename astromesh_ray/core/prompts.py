"""Jinja2 prompts, rendered in a sandbox with strict undefined variables.

``spec.prompts.system`` is the system prompt; ``spec.prompts.templates`` are named
templates it (or another template) can ``{% include %}`` or ``{% import %}``.
Everything is compiled at load time (a syntax error is a ``ConfigError`` naming the
prompt and line); rendering with a variable the request did not provide is an
``InvalidRequest`` naming the variable, never a silently empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from astromesh_ray.core.messages import Message
from astromesh_ray.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState
    from astromesh_ray.core.stages import StageEnv
    from astromesh_ray.spec import AgentSpec


class PromptSet:
    """The compiled prompts of one agent."""

    def __init__(
        self, system: str, templates: Mapping[str, str] | None = None, *, origin: str = "<agent>"
    ) -> None:
        self._origin = origin
        self._env = ImmutableSandboxedEnvironment(
            loader=jinja2.DictLoader(dict(templates or {})),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # prompts are plain text for a model, not HTML
        )
        for name in templates or {}:
            self._compile(f"templates.{name}", lambda n=name: self._env.get_template(n))
        self._system = self._compile("system", lambda: self._env.from_string(system))
        sources = {"system": system, **{f"templates.{n}": t for n, t in (templates or {}).items()}}
        for field, source in sources.items():
            for ref in jinja2.meta.find_referenced_templates(self._env.parse(source)):
                if ref is not None and ref not in (templates or {}):
                    raise ConfigError(
                        f"{self._origin}: spec.prompts.{field} includes {ref!r}, which is not "
                        "in spec.prompts.templates",
                        hint="templates: " + (", ".join(sorted(templates or {})) or "(none)"),
                        field=f"spec.prompts.{field}",
                    )
        # What of recalled memory the system prompt (with what it includes) places
        # itself; the prompt stage appends the rest.
        placed = _memory_placed(self._env, system, dict(templates or {}))
        self.places_summary = "summary" in placed
        self.places_knowledge = "knowledge" in placed
        # A system prompt with no variables and no includes renders the same every
        # time: render it once now.
        parsed = self._env.parse(system)
        self.static: str | None = None
        if not jinja2.meta.find_undeclared_variables(parsed) and not list(
            jinja2.meta.find_referenced_templates(parsed)
        ):
            try:
                self.static = self.render_system({})
            except InvalidRequest as exc:  # it would fail on every request
                raise ConfigError(exc.message, field="spec.prompts.system") from None

    def _compile(self, field: str, load: Any) -> jinja2.Template:
        try:
            template: jinja2.Template = load()
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"{self._origin}: spec.prompts.{field} line {exc.lineno}: "
                f"Jinja2 syntax error: {exc.message}",
                field=f"spec.prompts.{field}",
            ) from None
        return template

    def render_system(self, variables: Mapping[str, Any]) -> str:
        """The system prompt; a variable missing from ``variables`` is an ``InvalidRequest``."""
        try:
            # The mapping goes in positionally: a context key named `self` must not clash.
            return self._system.render(dict(variables)).strip()
        except jinja2.UndefinedError as exc:
            raise InvalidRequest(
                f"the system prompt of {self._origin} uses an undefined variable: {exc.message}",
                hint="pass the variable in the request's `context` object",
                field="context",
            ) from None
        except jinja2.TemplateNotFound as exc:
            raise ConfigError(
                f"the system prompt of {self._origin} includes {exc.name!r}, "
                "which is not in spec.prompts.templates",
                field="spec.prompts.system",
            ) from None
        except jinja2.exceptions.SecurityError as exc:
            raise InvalidRequest(
                f"the system prompt of {self._origin} tried an unsafe operation: {exc}",
                field="context",
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            # A context value of the wrong type for what the template does with it.
            raise InvalidRequest(
                f"the system prompt of {self._origin} failed to render: "
                f"{type(exc).__name__}: {exc}",
                hint="check the types of the values in the request's `context`",
                field="context",
            ) from None


def _memory_placed(env: jinja2.Environment, system: str, templates: Mapping[str, str]) -> set[str]:
    """Which of ``summary`` and ``knowledge`` the system prompt renders, counting the
    templates it includes (transitively): ``knowledge``, ``memory.semantic`` or
    ``memory.summary``, or ``memory`` as a whole (both)."""
    from jinja2 import nodes

    placed: set[str] = set()
    todo, seen = [system], set()
    while todo:
        tree = env.parse(todo.pop())
        keys: list[object] = []  # what `memory.<key>` / `memory["<key>"]` reads
        for n in tree.find_all(nodes.Getattr):
            if isinstance(n.node, nodes.Name) and n.node.name == "memory":
                keys.append(n.attr)
        for item in tree.find_all(nodes.Getitem):
            if isinstance(item.node, nodes.Name) and item.node.name == "memory":
                keys.append(getattr(item.arg, "value", None))
        names = [n.name for n in tree.find_all(nodes.Name)]
        if names.count("memory") > len(keys):
            placed |= {"summary", "knowledge"}  # the whole mapping is rendered
        if "knowledge" in names or "semantic" in keys:
            placed.add("knowledge")
        if "summary" in keys:
            placed.add("summary")
        for ref in jinja2.meta.find_referenced_templates(tree):
            if ref is not None and ref in templates and ref not in seen:
                seen.add(ref)
                todo.append(templates[ref])
    return placed


class PromptStage:
    """The ``prompts`` prepare stage: the system prompt rendered with the request's
    variables and what memory recalled, the session's replayed history, the
    conversation handed over (if any), then the user's query.

    Templates see ``memory`` (``conversation``: the replayed messages as dicts,
    ``summary``, ``semantic``: the recalled items, ``episodic``) and ``knowledge``
    (the recalled items as text, one per line).  A summary the system prompt does not
    place itself (``memory.summary``), or recalled knowledge it does not place
    (``knowledge``, ``memory.semantic``), is appended to it, so memory is never
    fetched and then dropped.  The replayed history is always sent as messages.
    """

    name = "prompts"

    def __init__(self, prompts: PromptSet) -> None:
        self.prompts = prompts

    async def prepare(self, ctx: RunContext, state: TurnState) -> None:
        request = ctx.request
        recall = state.recall
        system = self.prompts.static
        knowledge = "\n".join(f"- {hit.text}" for hit in recall.semantic)
        if system is None:
            variables: dict[str, Any] = {
                **request.context,
                "context": request.context,
                "memory": {
                    "conversation": [m.to_dict() for m in recall.history],
                    "summary": recall.summary or "",
                    "semantic": [hit.to_dict() for hit in recall.semantic],
                    "episodic": [],
                },
                "knowledge": knowledge,
                "query": request.query,
            }
            system = self.prompts.render_system(variables)
        extra = []
        if recall.summary and not self.prompts.places_summary:
            extra.append("Summary of the earlier conversation:\n" + recall.summary)
        if knowledge and not self.prompts.places_knowledge:
            extra.append("Relevant knowledge:\n" + knowledge)
        if extra:
            system = "\n\n".join(p for p in (system, *extra) if p)
        if system:
            state.messages.append(Message(role="system", content=system))
        state.messages.extend(recall.history)
        if request.continues:  # a swarm member: the conversation holds the query
            state.turn_start = len(state.messages)
            state.messages.extend(request.history)
            return
        state.messages.extend(request.history)
        state.turn_start = len(state.messages)
        state.messages.append(Message(role="user", content=request.query))


def prompt_stage(agent: AgentSpec, env: StageEnv) -> PromptStage:
    """The prompt stage of ``agent`` (every agent has one)."""
    prompts = agent.spec.prompts
    return PromptStage(
        PromptSet(prompts.system, prompts.templates, origin=agent.source or agent.name)
    )
