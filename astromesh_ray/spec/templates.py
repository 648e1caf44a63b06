"""The Jinja templates of patterns and chains (branch tasks, stage prompts and tool
arguments, chain ``when`` and ``input``): one sandboxed environment, checked at load
time for their syntax and the variables they may use, compiled once.

Only YAML authors write templates; what a model or a user writes only ever fills
their variables, and a missing variable is an error (``StrictUndefined``), never an
empty string.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from astromesh_ray.spec.base import rule_error

SANDBOX = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)


def check_template(text: str, key: str | tuple[str | int, ...], variables: Iterable[str]) -> None:
    """Refuse ``text`` (at YAML key ``key``) when it does not parse or uses a variable
    other than ``variables``."""
    try:
        parsed = SANDBOX.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise rule_error(
            key, f"template syntax error on its line {exc.lineno}: {exc.message}"
        ) from None
    allowed = set(variables)
    unknown = sorted(meta.find_undeclared_variables(parsed) - allowed)
    if unknown:
        raise rule_error(
            key,
            f"unknown variable(s) {', '.join(unknown)} in the template; it is given "
            + ", ".join(sorted(allowed)),
        )


def check_expression(text: str, key: str, variables: Iterable[str]) -> None:
    """Refuse a bare Jinja expression (``output.data.score > 7``) that does not
    compile or uses a variable other than ``variables``."""
    try:
        SANDBOX.compile_expression(text)
    except jinja2.TemplateSyntaxError as exc:
        raise rule_error(key, f"expression syntax error: {exc.message}") from None
    check_template("{{ " + text + " }}", key, variables)


@functools.lru_cache(maxsize=512)
def _compiled(text: str) -> jinja2.Template:
    return SANDBOX.from_string(text)


@functools.lru_cache(maxsize=512)
def _expression(text: str) -> Any:
    return SANDBOX.compile_expression(text, undefined_to_none=False)


def render(text: str, **variables: Any) -> str:
    """``text`` rendered with ``variables`` (``jinja2.TemplateError`` when it cannot)."""
    return _compiled(text).render(**variables)


def is_template(text: str) -> bool:
    """Whether ``text`` is a template (``{{ }}``/``{% %}``) rather than a bare
    expression."""
    return "{{" in text or "{%" in text


def evaluate(text: str, **variables: Any) -> Any:
    """A bare expression's value (``jinja2.TemplateError`` when it cannot be had)."""
    return _expression(text)(**variables)
