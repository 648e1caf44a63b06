"""``json_transform`` (a sandboxed, bounded Jinja2 template rendering JSON) and
``cache_store`` (the agent's tool cache, keys scoped by session, caller or agent)."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.core.tools.base import Tool
from astromesh_ray.core.tools.builtins import data as data_module
from astromesh_ray.core.tools.builtins import render as render_module
from astromesh_ray.core.tools.services import MemoryToolCache
from astromesh_ray.errors import ConfigError, ToolError

from .builtin_helpers import call, context, make_tool, tool_env

DATA = {"rows": [{"name": "a", "n": 2}, {"name": "b", "n": 5}], "title": "T"}


def transform(tmp_path: Path, **config: Any) -> Tool:
    return make_tool("json_transform", tool_env(tmp_path), **config)


@pytest.mark.parametrize(
    ("data", "template", "expected"),
    [
        (
            DATA,
            '{"names": {{ data.rows | map(attribute="name") | list | tojson }}}',
            {"names": ["a", "b"]},
        ),
        (DATA, '{{ data.rows | selectattr("n", "gt", 3) | list | tojson }}', [DATA["rows"][1]]),
        (DATA, '{"total": {{ data.rows | sum(attribute="n") }}}', {"total": 7}),
        (
            DATA,
            "[{% for r in data.rows %}{{ {'k': r.name | upper} | tojson }}"
            "{{ ',' if not loop.last }}{% endfor %}]",
            [{"k": "A"}, {"k": "B"}],
        ),
        (json.dumps(DATA), "{{ data.title | tojson }}", "T"),  # a JSON string is parsed
        ("plain", "{{ data | tojson }}", "plain"),
        ([3, 1, 2], "{{ data | sort | tojson }}", [1, 2, 3]),
    ],
)
async def test_json_transform(tmp_path: Path, data: Any, template: str, expected: Any) -> None:
    result = await call(transform(tmp_path), data=data, template=template)
    assert result.data == expected
    assert json.loads(result.content) == expected


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("not json", "did not render valid JSON"),
        ("{{ data.rows", "template syntax error"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ data.__class__.__mro__ }}", "not allowed"),
        ("{{ data.title.__class__.__subclasses__() }}", "not allowed"),
        ('{{ "x" * 100000000 }}', "repetition would exceed"),
        ('{{ "x".ljust(100000000) }}', "not allowed"),
        ('{{ "%99999999s" % 1 }}', "format width"),
        ("{{ 10 ** 100000 }}", "power result too large"),
        ('{{ "x" | replace("x", "y" * 1000) | replace("y", "z" * 1000) }}', "replace"),
        ('{{ "a" | center(100000000) }}', "center"),
        (
            "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}"
            '{{ f("x", 60) }}',
            "would exceed",
        ),
        ("{% set ns = namespace(s='x') %}{{ ns.s }}", "undefined"),
        ("{{ lipsum(100000) }}", "undefined"),
    ],
)
async def test_json_transform_refuses(tmp_path: Path, template: str, words: str) -> None:
    with pytest.raises(ToolError, match=words):
        await call(transform(tmp_path), data=DATA, template=template)


async def test_json_transform_time_budget(tmp_path: Path) -> None:
    tool = transform(tmp_path, max_render_seconds=0.2)
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}1"
    with pytest.raises(ToolError, match="max_render_seconds"):
        await call(tool, data=1, template=slow)


async def test_json_transform_output_cap(tmp_path: Path) -> None:
    tool = transform(tmp_path, max_output_chars=50)
    with pytest.raises(ToolError, match="max_output_chars"):
        await call(tool, data=1, template="[{% for i in range(100) %}{{ i }},{% endfor %}0]")


# The templates of the security review: each refused with a ToolError, before it
# builds its value, and the tool (this process) keeps working after it.
@pytest.mark.parametrize(
    ("template", "words"),
    [
        ('x{{ range(100000)|map("string")|join("x"*100000) }}', "filter join would exceed"),
        ('{{ ("a\\n"*100000)|indent("x"*20000) }}', "indent would exceed"),
        ('{{ ("a\\r"*100000)|indent("x"*20000) }}', "indent would exceed"),
        ("{% set a = range(20000)|list %}{{ ([a]*10000)|tojson }}", "tojson would exceed"),
        ("{{ [1]|slice(20000000)|list }}", "slice count"),
        ("{{ [1]|batch(10**8, 0)|list }}", "batch size"),
        ('{{ "%*d" % (3e8, 1) }}', "format width"),
        ('{{ "%*d" % (3e8|int, 1) }}', "format width"),
        ('{{ "%*d"|format(300000000, 1) }}', "format width"),
        # Many references to one large value, turned into text.
        ('{{ (["x"*200000]*200000)|join }}', "join would exceed"),
        ('{% set a = ["x"*200000]*200000 %}{{ a }}', "text of a value would exceed"),
        ('{% set a = ["x"*200000]*200000 %}{{ a ~ "" }}', "concatenation would exceed"),
        ('{{ [["x"*200000]*200000]|string }}', "filter string would exceed"),
        ('{{ ("%(a)199999s" * 16000) % {"a": 1} }}', "format width"),
        (
            '{% set x = "x"*200000 %}{% set s %}{% for i in range(100000) %}{{ x }}'
            "{% endfor %}{% endset %}{{ s|length }}",
            "block's output would exceed",
        ),
        ("{% set a = [['x']*1000]*1000 %}{{ (a|sum(start=[]))|length }}", "sum would exceed"),
        ("{% set x = 2**4000 %}{{ x*x*x*x*x*x*x*x*x*x*x*x*x*x*x*x*x*x }}", "product too large"),
        ('{{ (("a b "*30000)|wordwrap(1, wrapstring="y"*1000))|length }}', "wordwrap"),
        (
            '{% set x = "x"*200000 %}{% if false %}{% block b %}{% for i in range(100000) %}'
            "{{ x }}{% endfor %}{% endblock %}{% endif %}{{ self.b()|length }}",
            "calling a block",
        ),
    ],
)
async def test_json_transform_refuses_what_the_review_found(
    tmp_path: Path, template: str, words: str
) -> None:
    tool = transform(tmp_path)
    with pytest.raises(ToolError, match=words):
        await call(tool, data=DATA, template=template)
    after = await call(tool, data=DATA, template="{{ data.title | tojson }}")
    assert after.data == "T"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('{{ range(5)|map("string")|join(",")|tojson }}', "0,1,2,3,4"),
        ('{{ ("a\\nb")|indent("> ", first=true)|tojson }}', "> a\n> b"),
        ("{{ [1, 2, 3, 4, 5]|batch(2, 0)|list|tojson }}", [[1, 2], [3, 4], [5, 0]]),
        ("{{ [1, 2, 3, 4, 5]|slice(2)|list|tojson }}", [[1, 2, 3], [4, 5]]),
        ('{{ ("%3d|%-3s|%.1f" % (7, "ab", 1.25))|tojson }}', "  7|ab |1.2"),
        ('{{ ("%*d" % (4, 7))|tojson }}', "   7"),
        ('{{ ("%(a)s-%(b)s" % {"a": 1, "b": 2})|tojson }}', "1-2"),
        ('{{ ("a" ~ 1 ~ [2])|tojson }}', "a1[2]"),
        ('{{ data.rows|join(",", attribute="name")|tojson }}', "a,b"),
        ("{{ [[1, 2], [3]]|sum(start=[])|tojson }}", [1, 2, 3]),
        ("{% set s %}ab{{ 1 }}{% endset %}{{ s|tojson }}", "ab1"),
        ('{{ "aaa bbb ccc"|wordwrap(3)|tojson }}', "aaa\nbbb\nccc"),
    ],
)
async def test_json_transform_bounded_filters_still_work(
    tmp_path: Path, template: str, expected: Any
) -> None:
    result = await call(transform(tmp_path), data=DATA, template=template)
    assert result.data == expected


async def test_json_transform_memory_limit(tmp_path: Path) -> None:
    # Fresh 200 KB strings collected in a block: the child's address space runs out.
    tool = transform(tmp_path, max_memory_mb=128)
    hog = (
        '{% set s %}{% for i in range(100000) %}{{ "x" * 200000 }}{% endfor %}{% endset %}'
        "{{ s | length }}"
    )
    with pytest.raises(ToolError, match=r"more than 128 MB .*max_memory_mb"):
        await call(tool, data=1, template=hog)
    assert (await call(tool, data=[1], template="{{ data | tojson }}")).data == [1]


async def test_json_transform_cpu_limit_kills_the_renderer(tmp_path: Path) -> None:
    # One comparison in C (10**10 int comparisons) that no tracer can interrupt: the
    # child is killed by RLIMIT_CPU or at its deadline.
    tool = transform(tmp_path, max_render_seconds=0.5)
    slow = (
        "{% set a = range(100000)|list %}{% set b = range(100000)|list %}"
        "{{ ([a] * 100000 == [b] * 100000) | tojson }}"
    )
    with pytest.raises(ToolError, match="max_render_seconds"):
        await call(tool, data=1, template=slow)
    assert (await call(tool, data=2, template="{{ data }}")).data == 2


async def test_json_transform_budget_inside_filters(tmp_path: Path) -> None:
    # A chain of lazy filters runs 10**6 filter calls within one template line.
    tool = transform(tmp_path, max_render_seconds=0.3)
    chain = (
        '{{ ("x" * 199990)|list|map("upper")|map("lower")|map("trim")|map("title")'
        '|map("capitalize")|list|length }}'
    )
    with pytest.raises(ToolError, match=r"ran longer than 0\.3 s"):
        await call(tool, data=1, template=chain)


async def test_json_transform_cancelled_call_kills_the_renderer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procs: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def recording(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await spawn(*args, **kwargs)
        procs.append(proc)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
    tool = transform(tmp_path, max_render_seconds=60)
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}1"
    task = asyncio.create_task(call(tool, data=1, template=forever))
    while not procs:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert procs[0].returncode is not None  # killed and reaped


@pytest.mark.parametrize(
    ("boot", "words"),
    [
        ("import sys; sys.stdout.write('x' * 10**7)", "more than 1000 characters"),
        ("import sys; sys.stdout.write('[oops'); sys.exit(3)", "renderer failed"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "max_memory_mb"),
        ("raise MemoryError", "more than 512 MB"),
        ("import sys; sys.stdout.write('{\"rendered\": 5}')", "renderer failed"),
    ],
)
async def test_json_transform_renderer_failures_are_tool_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, boot: str, words: str
) -> None:
    # Whatever the child does (floods stdout, crashes, is killed, answers nonsense), the
    # model reads a ToolError; stdout is read with a cap.
    monkeypatch.setattr(data_module, "_BOOT", boot)
    with pytest.raises(ToolError, match=words):
        await call(transform(tmp_path, max_output_chars=1000), data=1, template="1")


def test_renderer_imports_only_jinja2_and_the_standard_library() -> None:
    script = (
        f"import runpy, sys; sys.path[:0] = {data_module._IMPORT_ROOTS.split(os.pathsep)!r}; "
        f"runpy.run_path({render_module.__file__!r}, run_name='renderer'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, check=True
    )
    assert set(ast.literal_eval(out.stdout)) <= {"jinja2", "markupsafe", "__main__"}


def test_json_transform_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        transform(tmp_path, expression="x")
    assert "unknown config key 'expression'" in err.value.message
    assert "max_output_chars, max_render_seconds" in (err.value.hint or "")
    assert "max_memory_mb" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="max_memory_mb"):
        transform(tmp_path, max_memory_mb=16)


def cache_tool(tmp_path: Path, cache: MemoryToolCache | None = None, **config: Any) -> Tool:
    cache = cache or MemoryToolCache()
    env = tool_env(tmp_path)
    env = type(env)(
        agent=env.agent,
        services=type(env.services)(
            mcp_stdio=env.services.mcp_stdio,
            rate_limiter=env.services.rate_limiter,
            cache=lambda agent: cache,
        ),
        workdir=tmp_path,
    )
    return make_tool("cache_store", env, **config)


async def test_cache_store_set_get_delete(tmp_path: Path) -> None:
    tool = cache_tool(tmp_path)
    assert getattr(tool, "side_effects", False) is True
    missing = await call(tool, action="get", key="k")
    assert missing.data == {"key": "k", "found": False, "value": None}
    await call(tool, action="set", key="k", value={"a": [1, 2]})
    got = await call(tool, action="get", key="k")
    assert got.data == {"key": "k", "found": True, "value": {"a": [1, 2]}}
    assert json.loads(got.content)["value"] == {"a": [1, 2]}
    deleted = await call(tool, action="delete", key="k")
    assert deleted.data == {"key": "k", "deleted": True}
    assert (await call(tool, action="get", key="k")).data["found"] is False


async def test_cache_store_ttl(tmp_path: Path) -> None:
    now = [0.0]
    cache = MemoryToolCache(clock=lambda: now[0])
    tool = cache_tool(tmp_path, cache, default_ttl_seconds=60)
    await call(tool, action="set", key="short", value=1, ttl_seconds=5)
    await call(tool, action="set", key="default", value=2)
    now[0] = 10
    assert (await call(tool, action="get", key="short")).data["found"] is False
    assert (await call(tool, action="get", key="default")).data["value"] == 2
    now[0] = 61
    assert (await call(tool, action="get", key="default")).data["found"] is False


async def test_cache_store_scopes(tmp_path: Path) -> None:
    cache = MemoryToolCache()
    session = cache_tool(tmp_path, cache)
    await call(session, context(session_id="s1", caller="alice"), action="set", key="k", value=1)
    other_session = await call(
        session, context(session_id="s2", caller="alice"), action="get", key="k"
    )
    other_caller = await call(
        session, context(session_id="s1", caller="bob"), action="get", key="k"
    )
    same = await call(session, context(session_id="s1", caller="alice"), action="get", key="k")
    assert (other_session.data["found"], other_caller.data["found"]) == (False, False)
    assert same.data["value"] == 1

    shared = cache_tool(tmp_path, cache, scope="agent")
    await call(shared, context(caller="alice"), action="set", key="k", value=2)
    got = await call(shared, context(session_id=None, caller="bob"), action="get", key="k")
    assert got.data["value"] == 2

    per_caller = cache_tool(tmp_path, cache, scope="caller")
    await call(per_caller, context(session_id="s1", caller="c"), action="set", key="k", value=3)
    got = await call(per_caller, context(session_id="s9", caller="c"), action="get", key="k")
    assert got.data["value"] == 3


async def test_cache_store_errors(tmp_path: Path) -> None:
    tool = cache_tool(tmp_path, max_value_chars=10)
    with pytest.raises(ToolError, match="needs a value"):
        await call(tool, action="set", key="k")
    with pytest.raises(ToolError, match="max_value_chars"):
        await call(tool, action="set", key="k", value="x" * 20)
    with pytest.raises(ToolError, match="action"):
        tool.validate({"action": "flush", "key": "k"})
    with pytest.raises(ConfigError, match=r"config.scope"):
        cache_tool(tmp_path, scope="global")


async def test_cache_store_uses_the_agents_cache_service(tmp_path: Path) -> None:
    # Through ToolServices.cache(agent): two tools of one agent share entries.
    env = tool_env(tmp_path, name="shared-agent")
    one, two = make_tool("cache_store", env), make_tool("cache_store", env)
    await call(one, action="set", key="k", value="v")
    assert (await call(two, action="get", key="k")).data["value"] == "v"


@pytest.mark.parametrize(
    ("scope", "one", "other"),
    [
        # (session_id, caller, key) pairs whose old keys, "session:{s}:{caller}:{key}"
        # and "caller:{caller}:{key}", were the same string.
        ("session", ("a:b", "c", "k"), ("a", "b:c", "k")),
        ("session", ("s1", "x:y", "k"), ("s1:x", "y", "k")),
        ("session", ("s1", "x", "y:k"), ("s1", "x:y", "k")),
        ("caller", ("s1", "a:b", "k"), ("s1", "a", "b:k")),
    ],
)
async def test_cache_store_keys_do_not_collide(
    tmp_path: Path, scope: str, one: tuple[str, str, str], other: tuple[str, str, str]
) -> None:
    tool = cache_tool(tmp_path, MemoryToolCache(), scope=scope)
    ctx_one = context(session_id=one[0], caller=one[1])
    ctx_other = context(session_id=other[0], caller=other[1])
    await call(tool, ctx_one, action="set", key=one[2], value="one")
    assert (await call(tool, ctx_other, action="get", key=other[2])).data["found"] is False
    await call(tool, ctx_other, action="set", key=other[2], value="other")
    assert (await call(tool, ctx_one, action="get", key=one[2])).data["value"] == "one"
    assert (await call(tool, ctx_other, action="get", key=other[2])).data["value"] == "other"
