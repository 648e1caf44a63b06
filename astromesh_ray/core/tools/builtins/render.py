"""The renderer of ``json_transform``, run in a child process (``python -I``, see
``data.py``) so that a model's template can never take the replica's memory or a
shared worker thread: the child gets hard limits (``RLIMIT_AS``, ``RLIMIT_CPU``) and
the parent kills it at its deadline.

Inside the child the template still renders in Jinja's immutable sandbox, bounded
so that most runaway templates stop early with a precise message: no operation may
build a string or list larger than ``limit`` characters or items (repetition,
concatenation, ``%`` formats with their widths and ``*`` widths, ``join`` separator
times items, ``indent`` with a string width, ``batch``/``slice`` counts, turning a
value with shared parts into text or JSON, a ``{% set %}`` block or macro body), and
a line tracer stops the template's own code at its CPU budget.

Protocol: stdin holds one JSON line ``{"memory_mb", "cpu_seconds"}`` (the limits,
set before the rest is read) then one JSON object ``{"template", "data", "limit",
"budget"}``; stdout gets one JSON object, ``{"rendered": str}`` or ``{"error": str,
"hint": str | null}``.  This module imports only the standard library and jinja2.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import BlockReference
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILE = "<template>"

# Methods a template may call on values (the rest, e.g. ljust/replace/format, can
# build values far larger than their inputs; filters cover what they do, bounded).
_METHODS: dict[type[Any], frozenset[str]] = {
    str: frozenset(
        {
            *("upper", "lower", "title", "capitalize", "casefold"),
            *("strip", "lstrip", "rstrip", "removeprefix", "removesuffix"),
            *("split", "rsplit", "splitlines", "partition", "rpartition"),
            *("startswith", "endswith", "count", "find", "rfind", "index", "rindex"),
            *("isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower"),
        }
    ),
    dict: frozenset({"items", "keys", "values", "get"}),
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
}
_DROPPED_GLOBALS = ("lipsum", "namespace", "cycler", "joiner")  # unbounded or accumulating
_DROPPED_FILTERS = ("pprint", "urlize", "xmlattr", "random", "forceescape", "safe")
# Filters that turn their value (and arguments) into text: checked before they run.
_TEXT_FILTERS = frozenset(
    {
        *("capitalize", "center", "e", "escape", "format", "indent", "lower", "replace"),
        *("string", "striptags", "title", "tojson", "trim", "truncate", "upper"),
        *("urlencode", "wordcount", "wordwrap", "join"),
    }
)
# What str.splitlines() splits on (indent and wordwrap work line by line).
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
# One printf-style conversion: %(key)flags width .precision length type.
_SPEC = re.compile(r"%(?:\(([^)]{0,200})\))?[#0+\- ]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.S)
_MAX_POWER_BITS = 4096
_MAX_PRODUCT_BITS = 65536


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def _lines(text: str) -> int:
    return sum(text.count(c) for c in _LINE_BREAKS) + 1


def text_size(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` (or its JSON) has, counting every
    occurrence of a shared part; stops counting once past ``limit``, so it costs
    O(limit) at most (every node counted adds at least one)."""
    if isinstance(value, str):
        return len(value)
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10 + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, (list, tuple)):
            total += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            for key, val in item.items():
                stack.append(key)
                stack.append(val)
        else:
            total += 1  # other objects (undefined, a range, a generator) print short
        if total > limit:
            break
    return total


class RenderError(Exception):
    """A message for the model (the parent turns it into a ``ToolError``)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class _OverBudget(BaseException):
    """The rendering ran past its time budget (raised from the tracer; not an
    ``Exception``, which Jinja's code might catch)."""


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to the environment's bounded ``concat_values`` (Jinja's own
    ``str_join`` would turn any value into text, however large)."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox where no single operation can build a value larger
    than ``limit`` characters or items: repetition, concatenation, ``%``, products,
    powers, width and count arguments, ``replace`` and ``join`` are checked before
    they run, every filter's and call's result after, text made of values (output,
    ``~``, text filters, ``tojson``) before, block and macro bodies before they are
    joined, and the globals that accumulate state are gone."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, limit: int) -> None:
        super().__init__(autoescape=False, undefined=jinja2.Undefined, finalize=self._finalize)
        self.limit = limit
        for name in _DROPPED_GLOBALS:
            self.globals.pop(name, None)
        self.filters = {
            name: self._bounded_filter(name, f)
            for name, f in self.filters.items()
            if name not in _DROPPED_FILTERS
        }
        self.concat = self._concat  # type: ignore[method-assign]

    # -- checks

    def _check(self, size: float, what: str) -> None:
        if size > self.limit:
            raise SecurityError(
                f"{what} would exceed {self.limit} characters (config max_output_chars)"
            )

    def _text(self, value: Any) -> int:
        return text_size(value, self.limit)

    def _check_format(self, fmt: Any, args: Any, what: str) -> None:
        """What ``fmt % args`` would build: the format's text, every width and
        precision (``*`` ones taken from ``args``) and every value's text."""
        if not isinstance(fmt, str):
            return
        positional = list(args) if isinstance(args, tuple) else [args]
        mapping = args if isinstance(args, dict) else None
        index = 0

        def next_arg() -> Any:
            nonlocal index
            index += 1
            return positional[index - 1] if index <= len(positional) else None

        total: float = len(fmt)
        for match in _SPEC.finditer(fmt):
            key, width, precision, kind = match.groups()
            if kind == "%":
                continue
            for part in (width, precision):
                if part == "*":
                    n = next_arg()
                    total += abs(n) if isinstance(n, (int, float)) else 0
                elif part:
                    if len(part) > 9:
                        raise SecurityError("format width too large")
                    total += int(part)
            value = mapping.get(key) if key is not None and mapping is not None else next_arg()
            total += self._text(value)
            if total > self.limit:
                raise SecurityError(f"format width too large: {what} would exceed {self.limit}")

    def _take(self, items: Iterable[Any], what: str) -> list[Any]:
        """``items`` as a list, refused past ``limit`` items."""
        taken: list[Any] = []
        for item in items:
            taken.append(item)
            if len(taken) > self.limit:
                raise SecurityError(f"{what} of more than {self.limit} items")
        return taken

    # -- text made of values

    def _finalize(self, value: Any) -> Any:
        if not isinstance(value, str):
            self._check(self._text(value), "the text of a value")
        return value

    def concat_values(self, values: Iterable[Any]) -> str:
        """``a ~ b ~ ...``: every part's text, checked before it is made."""
        values = list(values)
        self._check(sum(self._text(v) for v in values), "concatenation")
        return "".join(map(str, values))

    def _concat(self, parts: Iterable[str]) -> str:
        """The body of a ``{% set %}`` block, macro or call block (many references to
        one large string are cheap to collect, not to join)."""
        buffer: list[str] = []
        size = 0
        for part in parts:
            size += len(part)
            self._check(size, "a block's output")
            buffer.append(part)
        return "".join(buffer)

    # -- filters

    def _bounded_filter(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

        @functools.wraps(fn)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            value, rest = (args[skip], args[skip + 1 :]) if len(args) > skip else (None, ())
            if name == "join":
                return self._join(fn, args[:skip], value, *rest, **kwargs)
            if name == "sum":
                args, kwargs = self._sum_args(args[:skip], value, *rest, **kwargs)
            elif name in _TEXT_FILTERS:
                self._check_text_filter(name, value, rest, kwargs)
            elif name == "batch":
                count = kwargs.get("linecount", rest[0] if rest else None)
                fill = kwargs.get("fill_with", rest[1] if len(rest) > 1 else None)
                if fill is not None and isinstance(count, int) and count > self.limit:
                    raise SecurityError(
                        f"batch size {count} with a fill value is over {self.limit}"
                    )
            elif name == "slice":
                count = kwargs.get("slices", rest[0] if rest else None)
                if isinstance(count, int) and count > self.limit:
                    raise SecurityError(f"slice count {count} is over {self.limit}")
            result = fn(*args, **kwargs)
            self._check(_size(result), f"filter {name}")
            return result

        return bounded

    def _check_text_filter(
        self, name: str, value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        size = self._text(value)
        if name == "format":
            self._check_format(value, kwargs or rest, "format")
            return
        self._check(size + sum(self._text(a) for a in (*rest, *kwargs.values())), f"filter {name}")
        text = value if isinstance(value, str) else ""
        if name == "replace" and len(rest) >= 2 and isinstance(value, str):
            old, new = str(rest[0]), str(rest[1])
            self._check(len(value) + (value.count(old) if old else len(value)) * len(new), name)
        elif name == "indent":
            width = kwargs.get("width", rest[0] if rest else 4)
            per_line = len(width) if isinstance(width, str) else width
            if isinstance(per_line, int):
                self._check(size + _lines(text) * per_line, name)
        elif name == "center":
            width = kwargs.get("width", rest[0] if rest else 80)
            if isinstance(width, int):
                self._check(max(size, width), name)
        elif name == "wordwrap":
            width = kwargs.get("width", rest[0] if rest else 79)
            wrap = kwargs.get("wrapstring", rest[2] if len(rest) > 2 else None) or "\n"
            if isinstance(width, int) and isinstance(wrap, str):
                lines = _lines(text) + 2 * size // max(width, 1)
                self._check(size + lines * len(wrap), name)
        elif name == "tojson":
            indent = kwargs.get("indent", rest[0] if rest else None)
            if isinstance(indent, int) and indent > 8:
                raise SecurityError("tojson indent is at most 8")

    def _join(
        self,
        fn: Callable[..., Any],
        passed: tuple[Any, ...],
        value: Any,
        d: Any = "",
        attribute: str | int | None = None,
    ) -> Any:
        """``join``: separator × items + every item's text, counted as the items come
        (a lazy ``map`` or ``slice`` is never turned into text past ``limit``)."""
        sep = self._text(d)
        self._check(sep, "filter join")
        if attribute is not None:
            value = map(make_attrgetter(self, attribute), value)
        items: list[Any] = []
        total = 0
        for item in value:
            total += self._text(item) + (sep if items else 0)
            self._check(total, "filter join")
            items.append(item)
            if len(items) > self.limit:
                raise SecurityError(f"filter join of more than {self.limit} items")
        return fn(*passed, items, d)

    def _sum_args(
        self,
        passed: tuple[Any, ...],
        iterable: Any,
        attribute: str | int | None = None,
        start: Any = 0,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``sum`` over lists (``start=[]``) builds one list of all their items."""
        if attribute is not None:
            iterable = map(make_attrgetter(self, attribute), iterable)
        items = self._take(iterable, "filter sum")
        if isinstance(start, (list, tuple)):
            self._check(len(start) + sum(_size(i) for i in items), "filter sum")
        return (*passed, items), {"start": start}

    # -- attributes, calls, operators

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        allowed = _METHODS.get(type(obj))
        return allowed is None or not callable(value) or attr in allowed

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, BlockReference):  # joins a block's output unbounded
            raise SecurityError("calling a block (self.name() or super()) is not supported")
        for arg in (*args, *kwargs.values()):
            __self._check(_size(arg), "an argument")
        result = super().call(__context, __obj, *args, **kwargs)
        __self._check(_size(result), "a call's result")
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _size(seq) and isinstance(times, int):
                    self._check(len(seq) * times, "repetition")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > _MAX_PRODUCT_BITS
            ):
                raise SecurityError("product too large")
        elif operator == "+":
            self._check(_size(left) + _size(right), "concatenation")
        elif operator == "%":
            self._check_format(left, right, "operator %")
        elif (
            operator == "**"
            and isinstance(left, (int, float))
            and isinstance(right, (int, float))
            and abs(left) > 1
            and right > 0
            and right * math.log2(abs(left)) > _MAX_POWER_BITS
        ):
            raise SecurityError("power result too large")
        result = super().call_binop(context, operator, left, right)
        self._check(_size(result), f"operator {operator}")
        return result


def render(source: str, data: Any, limit: int, budget: float) -> str:
    """Render ``source`` with ``data`` in the bounded sandbox, within ``budget``
    seconds of this thread's CPU time; raises ``RenderError`` for the model."""
    deadline = time.thread_time() + budget

    calls = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        # Every line of the template, and every 64th call of any function (Jinja's
        # filters can loop over 10**5 items within one line of the template).
        nonlocal calls
        mine = frame.f_code.co_filename == TEMPLATE_FILE
        if not mine:
            calls += 1
            if calls % 64:
                return None
        if time.thread_time() > deadline:
            raise _OverBudget
        return trace if mine else None

    previous = sys.gettrace()
    parts: list[str] = []
    size = 0
    try:
        try:
            template = BoundedSandbox(limit).from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"template syntax error (line {exc.lineno}): {exc.message}") from None
        sys.settrace(trace)
        for chunk in template.generate(data=data):
            size += len(chunk)
            if size > limit:
                raise RenderError(
                    f"the template rendered more than {limit} characters (config max_output_chars)"
                )
            parts.append(chunk)
    except _OverBudget:
        raise RenderError(
            f"the template ran longer than {budget:g} s (config max_render_seconds)",
            hint="simplify the template (fewer nested loops)",
        ) from None
    except SecurityError as exc:
        raise RenderError(f"the template is not allowed: {exc}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template error: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        # What the template's own expressions raise (1/0, int('x'), ...).
        raise RenderError(f"template error: {type(exc).__name__}: {exc}") from None
    finally:
        sys.settrace(previous)
    return "".join(parts)


def _set_limits(memory_mb: int, cpu_seconds: int) -> None:
    import resource

    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork (not enforced for root)


def _answer(stdin: Any) -> dict[str, Any]:
    limits = json.loads(stdin.readline())
    memory_mb = int(limits["memory_mb"])
    _set_limits(memory_mb, int(limits["cpu_seconds"]))
    try:
        request = json.loads(stdin.read())
        rendered = render(
            request["template"], request["data"], int(request["limit"]), float(request["budget"])
        )
    except RenderError as exc:
        return {"error": exc.message, "hint": exc.hint}
    except MemoryError:
        return {
            "error": f"the template used more than {memory_mb} MB of memory (config max_memory_mb)",
            "hint": "build smaller values (fewer repetitions, shorter joins)",
        }
    except Exception as exc:  # what the sandbox let through: still the template's doing
        return {"error": f"template error: {type(exc).__name__}: {exc}", "hint": None}
    return {"rendered": rendered}


def main() -> None:
    """The child: limits, then one request from stdin, one answer to stdout."""
    answer = _answer(sys.stdin.buffer)
    sys.stdout.buffer.write(json.dumps(answer).encode("ascii"))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
