"""The pattern blocks of ``spec.orchestration`` (branches, stages, workers, members,
fail_fast), ``spec.output_schema`` and ``spec.chain``: each mistake is one issue at
its file, line and field; what only the code can tell is ``check_buildable``'s."""

from __future__ import annotations

import re

import pytest
from spec_helpers import AGENT, WriteYaml, issues_of

from astromesh_ray.spec import AgentSpec, load_agent, load_document, output_json_schema
from astromesh_ray.spec.orchestration import BranchSpec

# AGENT takes lines 1-10; what a case appends starts on line 11.
BAD: list[tuple[str, str, int, str, str]] = [
    (
        "stages-on-react",
        "  orchestration:\n    pattern: react\n    stages:\n      - {name: a, prompt: x}\n",
        13,
        "spec.orchestration.stages",
        "stages applies to the pipeline pattern, not react",
    ),
    (
        "stage-prompt-and-tool",
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - name: a\n        prompt: x\n        tool: t\n",
        14,
        "spec.orchestration.stages[0].name",
        "stage 'a' needs exactly one of prompt, tool or agent (it has prompt, tool)",
    ),
    (
        "stage-of-no-kind",
        "  orchestration:\n    pattern: pipeline\n    stages:\n      - name: a\n",
        14,
        "spec.orchestration.stages[0].name",
        "stage 'a' needs exactly one of prompt, tool or agent",
    ),
    (
        "arguments-on-a-prompt-stage",
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - name: a\n        prompt: x\n        arguments: {q: y}\n",
        16,
        "spec.orchestration.stages[0].arguments",
        "arguments apply to a tool stage only",
    ),
    (
        "jinja-in-a-stage-prompt",
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - name: a\n        prompt: 'Sum up {{ input '\n",
        15,
        "spec.orchestration.stages[0].prompt",
        "template syntax error on its line 1: unexpected end of template",
    ),
    (
        "jinja-in-a-stage-argument",
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - name: a\n        tool: t\n        arguments: {q: '{% if %}'}\n",
        16,
        "spec.orchestration.stages[0].arguments.q",
        "template syntax error",
    ),
    (
        "jinja-in-a-branch-task",
        "  orchestration:\n    pattern: parallel_fan_out\n    branches:\n"
        "      - name: b\n        task: 'Find {{ query '\n",
        15,
        "spec.orchestration.branches[0].task",
        "template syntax error on its line 1",
    ),
    (
        "jinja-in-a-branch-text",
        "  orchestration:\n    pattern: parallel_fan_out\n    branches:\n"
        "      - ok {{ query }}\n      - 'Find {{ query '\n",
        15,
        "spec.orchestration.branches[1]",
        "template syntax error on its line 1",
    ),
    (
        "empty-branch-text",
        "  orchestration:\n    pattern: parallel_fan_out\n    branches:\n      - ''\n",
        14,
        "spec.orchestration.branches[0]",
        "a branch needs a task",
    ),
    (
        "duplicate-stage-names",
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - {name: a, prompt: x}\n      - {name: a, prompt: y}\n",
        13,
        "spec.orchestration.stages",
        "stage names must be unique",
    ),
    (
        "duplicate-branch-names",
        "  orchestration:\n    pattern: parallel_fan_out\n    branches:\n"
        "      - {name: b, task: x}\n      - {name: b, task: y}\n",
        13,
        "spec.orchestration.branches",
        "branch names must be unique",
    ),
    (
        # A text branch is named branch-<n>: a mapping may not take that name.
        "branch-name-taken-by-a-text-branch",
        "  orchestration:\n    pattern: parallel_fan_out\n    branches:\n"
        "      - x\n      - {name: branch-1, task: y}\n",
        13,
        "spec.orchestration.branches",
        "branch names must be unique",
    ),
    (
        "members-with-one-name",
        "  orchestration:\n    pattern: swarm\n    members: [alpha]\n",
        13,
        "spec.orchestration.members",
        "at least 2 items",
    ),
    (
        "workers-with-a-non-agent-name",
        "  orchestration:\n    pattern: supervisor\n    workers: [good-one, Bad_Name]\n",
        13,
        "spec.orchestration.workers[1]",
        "'Bad_Name' is not an agent name",
    ),
    (
        "workers-named-twice",
        "  orchestration:\n    pattern: supervisor\n    workers: [good-one, good-one]\n",
        13,
        "spec.orchestration.workers",
        "an agent is named twice",
    ),
    (
        "pipeline-without-stages",
        "  orchestration:\n    pattern: pipeline\n",
        11,
        "spec.orchestration.stages",
        "the pipeline pattern needs stages",
    ),
    (
        "swarm-without-members",
        "  orchestration:\n    pattern: swarm\n",
        11,
        "spec.orchestration.members",
        "the swarm pattern needs members",
    ),
    (
        "fail-fast-on-pipeline",
        "  orchestration:\n    pattern: pipeline\n    fail_fast: true\n"
        "    stages:\n      - {name: a, prompt: x}\n",
        13,
        "spec.orchestration.fail_fast",
        "fail_fast applies to the parallel_fan_out and plan_and_execute patterns, not pipeline",
    ),
    (
        "branches-on-plan-and-execute",
        "  orchestration:\n    pattern: plan_and_execute\n    branches: [x]\n",
        13,
        "spec.orchestration.branches",
        "branches applies to the parallel_fan_out pattern, not plan_and_execute",
    ),
    (
        "output-schema-field-without-type",
        "  output_schema:\n    score:\n      description: the score\n",
        12,
        "spec.output_schema.score",
        "field 'score' needs a type",
    ),
    (
        "output-schema-field-with-an-unknown-type",
        "  output_schema:\n    score: {type: int}\n",
        12,
        "spec.output_schema.score",
        "field 'score' needs a type (string, integer",
    ),
    (
        "output-schema-not-a-json-schema",
        "  output_schema:\n    type: object\n    properties:\n      a: {type: strin}\n",
        14,
        "spec.output_schema.properties.a.type",
        "not a valid JSON Schema: 'strin' is not valid",
    ),
    (
        "output-schema-shorthand-with-a-bad-keyword",
        "  output_schema:\n    score: {type: integer, minimum: high}\n",
        12,
        "spec.output_schema.score.minimum",
        "not a valid JSON Schema: 'high' is not of type 'number'",
    ),
    (
        "chain-on-error-unknown",
        "  chain:\n    on_complete:\n      - agent: other\n        on_error: ignore\n",
        14,
        "spec.chain.on_complete[0].on_error",
        "invalid value 'ignore'; expected 'continue' or 'fail'",
    ),
    (
        "chain-without-on-complete",
        "  chain:\n    mode: sequential\n",
        11,
        "spec.chain.on_complete",
        "missing required field 'on_complete'",
    ),
    (
        "chain-when-syntax-error",
        "  chain:\n    on_complete:\n      - agent: other\n"
        "        when: '{{ output.data.score > }}'\n",
        14,
        "spec.chain.on_complete[0].when",
        "template syntax error",
    ),
    (
        "branch-unknown-variable",
        "  orchestration:\n    pattern: parallel_fan_out\n    branches:\n"
        "      - 'look up {{ input }}'\n",
        14,
        "spec.orchestration.branches[0]",
        "unknown variable(s) input in the template; it is given query",
    ),
    (
        "stage-unknown-variable",
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - name: a\n        prompt: '{{ output }}'\n",
        15,
        "spec.orchestration.stages[0].prompt",
        "unknown variable(s) output in the template; it is given input, query",
    ),
    (
        "chain-input-unknown-variable",
        "  chain:\n    on_complete:\n      - agent: other\n        input: '{{ answer }}'\n",
        14,
        "spec.chain.on_complete[0].input",
        "unknown variable(s) answer in the template; it is given output, query",
    ),
    (
        "chain-when-bare-expression-syntax",
        "  chain:\n    on_complete:\n      - agent: other\n        when: 'output.data.score >'\n",
        14,
        "spec.chain.on_complete[0].when",
        "expression syntax error",
    ),
    (
        "chain-mode-parallel",
        "  chain:\n    mode: parallel\n    on_complete:\n      - agent: other\n",
        12,
        "spec.chain.mode",
        "invalid value 'parallel'",
    ),
]


@pytest.mark.parametrize(
    ("case", "extra", "line", "path", "words"), BAD, ids=[case for case, *_ in BAD]
)
def test_bad_orchestration_blocks_are_one_issue_at_their_line(
    write: WriteYaml, case: str, extra: str, line: int, path: str, words: str
) -> None:
    file = write(f"{case}.agent.yaml", AGENT.format(name="a1") + extra)
    issues = issues_of(lambda: load_document(file))
    assert [(i["path"], i["line"]) for i in issues] == [(path, line)], issues
    assert issues[0]["file"] == str(file)
    assert words in issues[0]["message"]
    # The reported line holds the named key, or the list item (for a missing key,
    # its block's line).
    text = file.read_text(encoding="utf-8").splitlines()[line - 1]
    last = path.rsplit(".", 1)[-1]
    key = last.split("[")[0]
    if issues[0]["message"].startswith(("missing", "the ")):
        assert text.strip() in ("orchestration:", "chain:"), text
    elif last.endswith("]") and key not in text:
        assert text.lstrip().startswith("- "), text
    else:
        assert re.search(rf"(^|[\s{{,]){re.escape(key)}:", text), text


def test_branches_as_texts_and_as_name_and_task(write: WriteYaml) -> None:
    file = write(
        "fan.agent.yaml",
        AGENT.format(name="fan")
        + "  orchestration:\n    pattern: parallel_fan_out\n    fail_fast: true\n"
        "    branches:\n      - 'prices of {{ query }}'\n"
        "      - {name: reviews, task: 'reviews of {{ query }}'}\n      - specs\n",
    )
    agent = load_document(file)
    assert isinstance(agent, AgentSpec)
    orchestration = agent.spec.orchestration
    assert orchestration.fail_fast is True
    assert orchestration.branch_specs() == [
        BranchSpec(name="branch-1", task="prices of {{ query }}"),
        BranchSpec(name="reviews", task="reviews of {{ query }}"),
        BranchSpec(name="branch-3", task="specs"),
    ]


def test_pattern_blocks_load_on_their_patterns(write: WriteYaml) -> None:
    text = AGENT.format(name="{name}")
    pipeline = write(
        "pipe.agent.yaml",
        text.format(name="pipe") + "  tools:\n    - {name: calculator, type: builtin}\n"
        "  orchestration:\n    pattern: pipeline\n    stages:\n"
        "      - {name: draft, prompt: 'Draft: {{ input }}'}\n"
        "      - {name: sum, tool: calculator, arguments: {expression: '{{ input }}'}}\n"
        "      - {name: review, agent: reviewer}\n",
    )
    agent = load_agent(pipeline)
    stages = agent.spec.orchestration.stages or []
    assert [(s.name, s.prompt is not None, s.tool, s.agent) for s in stages] == [
        ("draft", True, None, None),
        ("sum", False, "calculator", None),
        ("review", False, None, "reviewer"),
    ]
    swarm = load_agent(
        write(
            "swarm.agent.yaml",
            text.format(name="swarm")
            + "  orchestration:\n    pattern: swarm\n    members: [triage, billing]\n",
        )
    )
    assert swarm.spec.orchestration.members == ["triage", "billing"]
    boss = load_agent(
        write(
            "boss.agent.yaml",
            text.format(name="boss")
            + "  orchestration:\n    pattern: supervisor\n    workers: [researcher]\n",
        )
    )
    assert boss.spec.orchestration.workers == ["researcher"]


def test_output_schema_shorthand_with_a_field_named_type(write: WriteYaml) -> None:
    # "type" is a field here (its value is a shorthand field), not the JSON Schema
    # keyword: the shorthand is not mistaken for a full schema.
    file = write(
        "lead.agent.yaml",
        AGENT.format(name="lead")
        + "  output_schema:\n    type: {type: string}\n    score: {type: integer}\n",
    )
    agent = load_agent(file)
    assert agent.spec.output_schema is not None
    schema = output_json_schema(agent.spec.output_schema)
    assert schema["type"] == "object"
    assert schema["properties"] == {"type": {"type": "string"}, "score": {"type": "integer"}}
    assert sorted(schema["required"]) == ["score", "type"]


def test_a_full_output_schema_loads_as_given(write: WriteYaml) -> None:
    file = write(
        "weather.agent.yaml",
        AGENT.format(name="weather") + "  output_schema:\n    type: object\n    properties:\n"
        "      city: {type: string}\n    required: [city]\n",
    )
    agent = load_agent(file)
    assert agent.spec.output_schema is not None
    assert output_json_schema(agent.spec.output_schema) == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }


def test_a_chain_loads_with_its_defaults(write: WriteYaml) -> None:
    file = write(
        "lead.agent.yaml",
        AGENT.format(name="lead") + "  chain:\n    on_complete:\n      - agent: composer\n",
    )
    chain = load_agent(file).spec.chain
    assert chain is not None and chain.mode == "sequential"
    (step,) = chain.on_complete
    assert (step.agent, step.when, step.input, step.on_error, step.timeout_s) == (
        "composer",
        None,
        "{{ output.answer }}",
        "continue",
        None,
    )
    assert (step.retry.max_attempts, step.retry.backoff, step.retry.initial_delay_s) == (
        1,
        "exponential",
        1.0,
    )


# -- what check_buildable refuses ---------------------------------------------------
