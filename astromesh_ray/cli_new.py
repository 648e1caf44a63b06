"""``astromesh new NAME --pattern P``: the YAML of a new agent, ready to run.

Each of the six patterns gets the smallest block it needs to load and build (a
pipeline's stages, a fan-out's branches, ...), with comments saying what to change.
The scaffold passes ``astromesh validate`` as written: nothing in it is a
placeholder that would fail.

Supervisor and swarm agents delegate to other agents, so they need their names:
``--workers a,b`` (a swarm's members, at least two; a supervisor's workers, at least
one; plan_and_execute may name workers too).  A named agent that is not already in
the target directory (no ``*.yaml`` there has it as ``metadata.name``) is
scaffolded alongside as a plain react agent, so the set is complete; one that is
there is used as it is.  No file is ever overwritten: if any file to write exists,
nothing is written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from astromesh_ray.errors import ConfigError

__all__ = ["PATTERNS", "new_command", "scaffold"]

PATTERNS = ("react", "plan_and_execute", "parallel_fan_out", "pipeline", "supervisor", "swarm")
# The fewest delegates each pattern needs (None: it takes none).
_DELEGATES: dict[str, int | None] = {
    "react": None,
    "plan_and_execute": 0,
    "parallel_fan_out": None,
    "pipeline": None,
    "supervisor": 1,
    "swarm": 2,
}

_HEAD = """\
# {pattern} agent, made by `astromesh new`.
# Check it:  astromesh validate {path}
# Run it:    astromesh run {name} "hello" --agents {dir}
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
  version: "0.1.0"
spec:
  identity:
    description: "{description}"
  model:
    primary:
      provider: {provider}
      model: {model}
{endpoint}"""

_BODIES = {
    "react": """\
  prompts:
    system: |
      You are a helpful assistant. Use the calculator for arithmetic; answer briefly.
  orchestration:
    pattern: react  # think, call tools, read their results, repeat until an answer
    max_iterations: 6
    timeout_seconds: 60
  tools:
    - name: calculator
      type: builtin
""",
    "plan_and_execute": """\
  prompts:
    system: |
      You are a careful research assistant. Use the calculator for arithmetic.
  orchestration:
    pattern: plan_and_execute  # plan steps, run the independent ones at once, synthesize
    max_iterations: 12
    timeout_seconds: 120
{delegates}  tools:
    - name: calculator
      type: builtin
""",
    "parallel_fan_out": """\
  prompts:
    system: |
      You weigh options for a small team. Be concrete and brief.
  orchestration:
    pattern: parallel_fan_out  # the branches run at the same time, then a synthesis
    max_iterations: 6
    timeout_seconds: 90
    branches:  # without branches, a splitter model step writes them per question
      - name: pros
        task: "The main advantages of {{ query }}."
      - name: cons
        task: "The main drawbacks of {{ query }}."
""",
    "pipeline": """\
  prompts:
    system: |
      You write clear, short answers.
  orchestration:
    pattern: pipeline  # each stage's output is the next one's {{ input }}
    max_iterations: 4
    timeout_seconds: 90
    stages:  # a stage is a prompt, a tool (tool: NAME) or another agent (agent: NAME)
      - name: outline
        prompt: |
          Write a three-point outline of an answer to: {{ input }}
      - name: write
        prompt: |
          Answer "{{ query }}" in one paragraph, following this outline:
          {{ input }}
""",
    "supervisor": """\
  prompts:
    system: |
      You lead a team: ask your workers (each is a tool taking a query) what you
      need, several at once when you can, then answer from what they said.
  orchestration:
    pattern: supervisor  # delegates to worker agents through tool calls
    max_iterations: 10
    timeout_seconds: 120
{delegates}""",
    "swarm": """\
  # The model above only re-shapes a structured answer (spec.output_schema): the
  # members answer with their own models.  The first member starts; each may hand
  # the conversation to another (transfer_to_<member>).
  orchestration:
    pattern: swarm
    max_iterations: 8
    timeout_seconds: 120
{delegates}""",
}

_DESCRIPTIONS = {
    "react": "Answers questions, using a calculator when it helps.",
    "plan_and_execute": "Plans the steps of a question, runs them and writes up the findings.",
    "parallel_fan_out": "Looks at a question from two angles at once and merges them.",
    "pipeline": "Outlines an answer, then writes it.",
    "supervisor": "Asks its workers and answers from what they say.",
    "swarm": "A team of agents passing the conversation to whoever can answer.",
}

_MEMBER_SYSTEM = (
    "You are {name}, one of a team of agents. Answer what you can; if another\n"
    "      member of the team is better placed, hand the conversation to them."
)


def check_name(name: str, what: str = "NAME") -> str:
    """``name`` if it is a valid ``metadata.name``, else ``ConfigError`` saying why."""
    from astromesh_ray.spec.orchestration import AGENT_NAME

    if not re.fullmatch(AGENT_NAME, name):
        raise ConfigError(
            f"{what} {name!r} is not a valid agent name",
            hint="lowercase letters, digits and dashes; starts with a letter, ends with a "
            "letter or digit (e.g. support-bot)",
        )
    return name


def scaffold(
    name: str,
    pattern: str,
    directory: Path,
    *,
    provider: str = "ollama",
    model: str = "llama3.1:8b",
    endpoint: str | None = None,
    workers: list[str] | None = None,
) -> dict[Path, str]:
    """The files to write for agent ``name``: path -> YAML text (the agent first,
    then any delegate it names that ``directory`` does not already hold)."""
    check_name(name)
    if pattern not in PATTERNS:
        raise ConfigError(f"unknown pattern {pattern!r}", hint="patterns: " + ", ".join(PATTERNS))
    workers = [check_name(w, "worker") for w in workers or []]
    least = _DELEGATES[pattern]
    if least is None and workers:
        raise ConfigError(
            f"--workers applies to the supervisor, swarm and plan_and_execute patterns, "
            f"not {pattern}"
        )
    if least is not None and len(workers) < least:
        kind = "members" if pattern == "swarm" else "workers"
        raise ConfigError(
            f"a {pattern} agent needs at least {least} {kind}: give --workers a,b",
            hint="agents not yet in the directory are scaffolded with it",
        )
    if name in workers or len(set(workers)) != len(workers):
        raise ConfigError("--workers names an agent twice (or the new agent itself)")
    model_block = {"provider": provider, "model": model, "endpoint": endpoint}
    files = {
        directory / f"{name}.agent.yaml": _agent(name, pattern, directory, model_block, workers)
    }
    present = _agent_names(directory)
    for worker in workers:
        if worker not in present:
            files[directory / f"{worker}.agent.yaml"] = _member(
                worker, name, directory, model_block
            )
    return files


def _head(pattern: str, name: str, directory: Path, description: str, model: dict[str, Any]) -> str:
    endpoint = model["endpoint"]
    return _HEAD.format(
        pattern=pattern,
        path=directory / f"{name}.agent.yaml",
        name=name,
        dir=directory,
        description=description,
        provider=model["provider"],
        model=json.dumps(model["model"]),  # a JSON string is a YAML string: quoted safely
        endpoint=f"      endpoint: {json.dumps(endpoint)}\n" if endpoint else "",
    )


def _agent(
    name: str, pattern: str, directory: Path, model: dict[str, Any], workers: list[str]
) -> str:
    head = _head(pattern, name, directory, _DESCRIPTIONS[pattern], model)
    key = "members" if pattern == "swarm" else "workers"
    delegates = f"    {key}: [{', '.join(workers)}]\n" if workers else ""
    return head + _BODIES[pattern].replace("{delegates}", delegates)


def _member(name: str, lead: str, directory: Path, model: dict[str, Any]) -> str:
    head = _head("react", name, directory, f"A member of {lead}'s team.", model)
    return head + (
        "  prompts:\n    system: |\n      "
        + _MEMBER_SYSTEM.format(name=name)
        + "\n  orchestration:\n    pattern: react\n    max_iterations: 4\n"
        "    timeout_seconds: 60\n"
    )


def _agent_names(directory: Path) -> set[str]:
    """``metadata.name`` of each Agent document in ``directory``'s YAML files."""
    names: set[str] = set()
    if not directory.is_dir():
        return names
    for path in [*directory.glob("*.yaml"), *directory.glob("*.yml")]:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue  # not ours to judge here: `astromesh validate` reports it
        for doc in documents:
            if isinstance(doc, dict) and doc.get("kind") == "Agent":
                metadata = doc.get("metadata")
                if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
                    names.add(metadata["name"])
    return names


def _check_yaml(files: dict[Path, str]) -> None:
    """Refuse, before writing, what the YAML checks would refuse (a provider name
    mistyped in ``--provider``): the files are checked in a scratch directory."""
    import tempfile

    from astromesh_ray.spec.validation import validate_files

    with tempfile.TemporaryDirectory() as scratch:
        copies = []
        for path, text in files.items():
            copy = Path(scratch) / path.name
            copy.write_text(text)
            copies.append(copy)
        issues = validate_files(copies).issues
        if issues:
            lines = [issue.render().replace(scratch + "/", "") for issue in issues]
            raise ConfigError("\n".join(lines), hint="check --provider, --model and --endpoint")


def new_command(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    workers = [w.strip() for w in (args.workers or "").split(",") if w.strip()]
    files = scaffold(
        args.name,
        args.pattern,
        directory,
        provider=args.provider,
        model=args.model,
        endpoint=args.endpoint,
        workers=workers,
    )
    taken = [str(p) for p in files if p.exists()]
    if taken:
        raise ConfigError(
            "refusing to overwrite " + ", ".join(taken),
            hint="choose another NAME or --dir, or remove the file first",
        )
    if args.name in _agent_names(directory):
        raise ConfigError(
            f"an agent named {args.name!r} is already in {directory}",
            hint="agent names are unique in a directory: choose another NAME",
        )
    _check_yaml(files)
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        with path.open("x") as out:  # "x": never overwrite, even if created meanwhile
            out.write(text)
        print(f"wrote {path}")
    print(f"next: astromesh validate {directory}", file=sys.stderr)
    return 0
