"""Pydantic validation errors → ``ConfigIssue`` with position, YAML path and a hint.

A pydantic ``loc`` mixes YAML keys with union tags (``internal``, ``shorthand``);
we follow it through the parsed data, skipping what is not a key there, to find the
path the user wrote and its line.  Unknown keys and bad choices get a did-you-mean.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, Tag, ValidationError
from pydantic_core import ErrorDetails

from astromesh_ray.spec.base import SPEC_RULE, ConfigIssue, YamlPath, render_path
from astromesh_ray.spec.yaml_positions import ParsedYaml

_QUOTED = re.compile(r"'([^']*)'")
_QUOTE_HINT = "quote it: YAML reads yes/no/on/off/true/false as booleans"


def did_you_mean(word: object, choices: list[str]) -> str | None:
    """``did you mean 'x'?`` for the closest of ``choices``, else ``None``."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def yaml_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts in YAML, as the documentation spells them."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices):
            keys += [c for c in info.validation_alias.choices if isinstance(c, str)]
        elif isinstance(info.validation_alias, str):
            keys.append(info.validation_alias)
        else:
            keys.append(info.alias or name)
    return keys


def _all_keys(model: type[BaseModel]) -> list[str]:
    return yaml_keys(model) + [n for n in model.model_fields if n not in yaml_keys(model)]


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` → X and ``X | None`` → X."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _member_for_tag(tp: Any, tag: object) -> Any | None:
    for member in get_args(tp):
        tags = [m.tag for m in get_args(member)[1:] if isinstance(m, Tag)]
        if get_origin(member) is Annotated and tag in tags:
            return member
        inner = _strip(member)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            field = inner.model_fields.get("type")
            if field is not None and tag in get_args(_strip(field.annotation)):
                return inner
    return None


def _step(tp: Any, part: object) -> Any:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            if part == name or part in _field_keys(name, info):
                return info.annotation
        return tp  # a tag or an unknown key: stay on this model
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        member = _member_for_tag(tp, part)
        return member if member is not None else tp
    if origin in (list, tuple, set) and isinstance(part, int):
        return get_args(tp)[0]
    if origin is dict:
        return get_args(tp)[1]
    return None


def _field_keys(name: str, info: Any) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return [k for k in (alias, info.alias, name) if isinstance(k, str)]


def model_at(root: type[BaseModel], loc: tuple[object, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (best effort)."""
    tp: Any = root
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return None
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def tags_at(root: type[BaseModel], loc: tuple[object, ...]) -> list[str]:
    """The ``type`` values accepted by the tagged union at ``loc`` (best effort)."""
    tp: Any = root
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    tags: list[str] = []
    for member in get_args(_strip(tp)):
        tagged = [str(m.tag) for m in get_args(member)[1:] if isinstance(m, Tag)]
        inner = _strip(member)
        if not tagged and isinstance(inner, type) and issubclass(inner, BaseModel):
            field = inner.model_fields.get("type")
            if field is not None:
                tagged = [str(a) for a in get_args(_strip(field.annotation))]
        tags += tagged
    return tags


def walk(data: Any, loc: tuple[object, ...]) -> tuple[YamlPath, list[object]]:
    """Follow ``loc`` through ``data``: the YAML path found, and the parts skipped."""
    found: list[object] = []
    skipped: list[object] = []
    for part in loc:
        in_mapping = isinstance(data, dict) and _hashable(part) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_mapping or in_list:
            found.append(part)
            data = data[part]
        else:
            skipped.append(part)
    return tuple(found), skipped


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _expected(ctx: dict[str, Any], key: str) -> list[str]:
    return _QUOTED.findall(str(ctx.get(key, "")))


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def issues_from_validation(
    error: ValidationError, root: type[BaseModel], parsed: ParsedYaml, file: str
) -> list[ConfigIssue]:
    """One ``ConfigIssue`` per pydantic error, positioned in ``parsed``."""
    issues: list[ConfigIssue] = []
    seen: set[str] = set()
    for err in error.errors(include_url=False):
        issue = _issue(err, root, parsed, file)
        # A value failing a union fails once per member: report the first only.
        if err["type"] in ("extra_forbidden", "missing"):
            key = f"{issue.path}\0{issue.message}"
        else:
            key = issue.path
        if key not in seen:
            seen.add(key)
            issues.append(issue)
    return issues


def _issue(err: ErrorDetails, root: type[BaseModel], parsed: ParsedYaml, file: str) -> ConfigIssue:
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    loc: tuple[object, ...] = tuple(err["loc"])
    value = err.get("input")
    extra: list[object] = []  # parts named in the message but absent from the file
    hint: str | None = None
    if kind == SPEC_RULE:
        loc = (*loc, *ctx["key"])
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "type")
    elif kind == "invalid_key":
        loc = (*loc[:-1], value)  # pydantic reports `True` as index 1
    path, skipped = walk(parsed.data, loc)
    at_key = True
    if kind == "extra_forbidden":
        key = path[-1] if path else loc[-1]
        message = f"unknown field {key!r}"
        model = model_at(root, loc[:-1])
        if model is not None:
            allowed = yaml_keys(model) + list(getattr(model, "schema_aliases", {}))
            hint = did_you_mean(key, _all_keys(model)) or "allowed: " + ", ".join(allowed)
    elif kind == "missing":
        extra = [loc[-1]]
        message = f"missing required field {loc[-1]!r}"
    elif kind == SPEC_RULE:
        extra = [p for p in ctx["key"] if p in skipped][-1:]
        message = str(ctx["message"])
    elif kind == "union_tag_invalid":
        tags = _expected(ctx, "expected_tags")
        message = f"unknown type {ctx.get('tag')!r}; expected one of {', '.join(tags)}"
        hint = did_you_mean(ctx.get("tag"), tags)
        at_key = False
    elif kind == "union_tag_not_found":
        extra = ["type"] if "type" in skipped else []
        message = "missing required field 'type'"
        tags = tags_at(root, loc[:-1])
        hint = "one of: " + ", ".join(tags) if tags else None
    elif kind in ("literal_error", "enum"):
        choices = _expected(ctx, "expected")
        message = f"invalid value {value!r}; expected {ctx.get('expected')}"
        hint = did_you_mean(value, choices)
        at_key = False
    elif kind == "invalid_key":
        message = f"key {value!r} is not text"
        hint = _QUOTE_HINT if isinstance(value, bool) else "quote the key"
    else:
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if _scalar(value) and kind not in ("value_error", "assertion_error"):
            message += f" (got {value!r})"
        if kind == "string_type" and isinstance(value, bool):
            hint = _QUOTE_HINT
        at_key = False
    position = parsed.locate(path, key=at_key) or (None, None)
    return ConfigIssue(
        file=file,
        line=position[0],
        column=position[1],
        path=render_path((*path, *extra)),
        message=message,
        hint=hint,
    )
