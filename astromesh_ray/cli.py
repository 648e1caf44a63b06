"""The ``astromesh`` command: validate | schema | run | chat | agents | new | ingest | serve |
apply | keys | deploy-config."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from astromesh_ray import cli_apply, cli_keys
from astromesh_ray.cli_new import PATTERNS
from astromesh_ray.errors import AstromeshError, ConfigError

if TYPE_CHECKING:
    from astromesh_ray.spec.validation import AgentCheck


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _interruptible()
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except AstromeshError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _interruptible() -> None:
    """Make Ctrl-C (SIGINT) raise ``KeyboardInterrupt`` here, whatever this process
    inherited: a parent that ignores SIGINT (a test runner, a service manager, a
    non-interactive shell's background job) passes that on across exec, and `serve`
    would then never shut down, nor `chat` stop an answer.  SIGTERM (what `kill` and
    container runtimes send) stops it the same way, so `serve` still deletes its
    applications and shuts down the cluster it started."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astromesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--session-id", help="conversation id (chat: default, a new one)")
        p.add_argument("--context", default="{}", help="JSON object of prompt variables")
        p.add_argument("--url", help="a running server (astromesh serve) instead of this process")
        p.add_argument("-v", "--verbose", action="store_true", help="show tool calls on stderr")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            help="config directory (default: $ASTROMESH_CONFIG_DIR, ./config, /etc/astromesh)",
        )
        p.add_argument(
            "--agents", help="agents directory (default: $ASTROMESH_AGENTS_DIR, <config>/agents)"
        )

    p = sub.add_parser(
        "validate",
        help="check YAML files or directories as serve and run would; list every error",
        description="Check what serve and run check before they start: every YAML error, "
        "then, for every Agent document read (whatever its file is called), its tools, "
        "prompts, pattern and provider clients.  A configuration directory is loaded as "
        "serve loads it; agents in its agents/ directory get its providers.  With no "
        "paths: the directories `astromesh serve` would load.",
    )
    p.add_argument("paths", nargs="*", type=Path)
    with_config(p)
    p.set_defaults(handler=_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of a YAML kind")
    p.add_argument(
        "--kind",
        default="Agent",
        choices=["Agent", "ProviderConfig", "RuntimeConfig", "RAGPipeline", "Channel", "Event"],
        help="a YAML kind, or Event: one event of a run's stream (SSE, WebSocket)",
    )
    p.set_defaults(handler=_schema)

    p = sub.add_parser(
        "run",
        help="run one turn of an agent, its answer streamed (in this process, or --url)",
        description="Run one turn of AGENT and write its answer as it is generated.  In "
        "this process (no Ray: the agent and the agents it calls are built here, after "
        "the checks serve makes), or with --url on a running server.  Tool calls go to "
        "stderr, one line each, on a terminal or with --verbose.  A run that pauses "
        "(client tools, approvals) says so and exits 1.",
    )
    p.add_argument("agent")
    p.add_argument("query")
    run_options(p)
    p.add_argument("--json", action="store_true", help="print the whole result as JSON, at the end")
    with_config(p)
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "chat",
        help="talk with an agent, one turn per line, in one session",
        description="An interactive conversation: each line is a turn of one session "
        "(its id printed at the start).  An agent with conversational memory remembers "
        "the session; for one without, the conversation so far is sent with each turn.  "
        "/new starts a new session, /help lists the commands, /exit or Ctrl-D quits.",
    )
    p.add_argument("agent")
    run_options(p)
    with_config(p)
    p.set_defaults(handler=_chat)

    p = sub.add_parser(
        "agents",
        help="list the agents of a running server, with their health",
        description="GET /v1/agents and each agent's /health on a running server.",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("ASTROMESH_URL") or "http://127.0.0.1:8000",
        help="the server (default: $ASTROMESH_URL, else http://127.0.0.1:8000)",
    )
    p.add_argument("--json", action="store_true", help="print the agents as JSON")
    p.set_defaults(handler=_agents)

    p = sub.add_parser(
        "new",
        help="write the YAML of a new agent for one of the six patterns",
        description="Scaffold NAME.agent.yaml in --dir, ready to validate and run.  "
        "supervisor and swarm need --workers (a swarm's members); those not already "
        "in --dir are scaffolded too.  Existing files are never overwritten.",
    )
    p.add_argument("name", help="the agent's metadata.name (lowercase letters, digits, dashes)")
    p.add_argument("--pattern", required=True, choices=PATTERNS)
    p.add_argument("--dir", default="config/agents", help="where to write (default: config/agents)")
    p.add_argument("--provider", default="ollama", help="model provider (default: ollama)")
    p.add_argument("--model", default="llama3.1:8b", help="model name (default: llama3.1:8b)")
    p.add_argument("--endpoint", help="the provider's URL (default: the provider's own)")
    p.add_argument(
        "--workers",
        help="comma-separated agent names: a supervisor's workers, a swarm's members "
        "(at least two), plan_and_execute's optional workers",
    )
    p.set_defaults(handler=_new)

    p = sub.add_parser(
        "ingest",
        help="ingest files into a RAG pipeline (kind: RAGPipeline, <config>/rag/*.yaml)",
        description="Load, chunk, embed and store files: each file given, and every file "
        "under each directory given (recursively) whose extension one of the pipeline's "
        "loaders reads.  A file is named by its path (relative to the working directory "
        "when under it); ingesting it again replaces its chunks, and an unchanged file is "
        "skipped.  The pipeline's store is opened in this process: for an embedded store "
        "(faiss, qdrant or chromadb without a server URL) that `astromesh serve` is "
        "running, use POST /v1/rag/{pipeline}/ingest instead.",
    )
    p.add_argument("pipeline")
    p.add_argument("paths", nargs="+", type=Path)
    with_config(p)
    p.set_defaults(handler=_ingest)

    p = sub.add_parser("serve", help="serve the agents over HTTP on a Ray cluster")
    p.add_argument(
        "--host", default=None, help="default: runtime.yaml spec.api.host, else 127.0.0.1"
    )
    p.add_argument(
        "--port", type=int, default=None, help="default: runtime.yaml spec.api.port, else 8000"
    )
    p.add_argument("--address", help="Ray cluster address to join (default: start a local one)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="with no API keys, serve every client anyway (default: loopback only)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="reload the configuration when its YAML files change (as `apply` does)",
    )
    with_config(p)
    p.set_defaults(handler=_serve)

    cli_apply.add_parser(sub)

    cli_keys.add_parser(sub)

    p = sub.add_parser("deploy-config", help="print a Serve config file for `serve deploy`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    with_config(p)
    p.set_defaults(handler=_deploy_config)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from astromesh_ray.spec.directory import resolve_dirs
    from astromesh_ray.spec.validation import validate_dirs, validate_files

    if args.paths and (args.config or args.agents):
        print("error: give paths, or --config/--agents, not both", file=sys.stderr)
        return 2
    if args.paths:
        validation = validate_files(list(args.paths))
    else:
        validation = validate_dirs(*resolve_dirs(args.config, args.agents))
    for issue in validation.issues:
        print(issue.render(), file=sys.stderr)
    if validation.issues:
        print(f"{len(validation.issues)} error(s)", file=sys.stderr)
        return 1
    # The YAML is valid: now what needs the code, as serve and run check it.
    problems: list[str] = []
    for check in validation.checks:
        problems += _build_problems(check)
    if problems:
        unique = list(dict.fromkeys(problems))  # a file given twice is reported once
        raise ConfigError("\n".join(unique), problems=unique)
    print(f"ok: {len(validation.agents)} agent(s) checked")
    return 0


def _build_problems(check: AgentCheck) -> list[str]:
    """What ``serve`` would refuse in ``check`` before deploying: ``check_buildable``
    (tools, peers, prompts, pattern roles, provider clients when the providers are
    known) and, with a configuration, the deployment plan (provider deployments
    declared twice, in-cluster vLLM options)."""
    from astromesh_ray.core.build import check_buildable

    if not check.agents:
        return []
    providers = check.config.providers if check.config is not None else None
    try:
        rag = check.config.rag_pipelines if check.config is not None else None
        check_buildable(check.agents, providers, known=check.known, rag=rag)
        if check.config is not None:
            from astromesh_ray.serve.builders import plan  # imports Ray: only when needed

            agents = {agent.name: agent for agent in check.agents}
            plan(dataclasses.replace(check.config, agents=agents), None)
    except ConfigError as exc:
        found = exc.details.get("problems")
        return [str(p) for p in found] if isinstance(found, list) else [exc.message]
    return []


def _schema(args: argparse.Namespace) -> int:
    if args.kind == "Event":
        from astromesh_ray.core.events import event_json_schema

        print(json.dumps(event_json_schema(), indent=2))
        return 0
    from astromesh_ray.spec import json_schema

    print(json.dumps(json_schema(args.kind), indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from astromesh_ray.cli_run import run_command

    return run_command(args)


def _chat(args: argparse.Namespace) -> int:
    from astromesh_ray.cli_chat import chat_command

    return chat_command(args)


def _agents(args: argparse.Namespace) -> int:
    from astromesh_ray.cli_output import Style, table
    from astromesh_ray.cli_remote import list_agents

    agents = list_agents(args.url)
    if args.json:
        print(json.dumps(agents, indent=2))
        return 0
    if not agents:
        print(f"no agents are served at {args.url}", file=sys.stderr)
        return 0
    style = Style(sys.stdout)
    colours = {"ok": "green", "degraded": "yellow"}
    rows = []
    for agent in agents:
        health = agent.get("health") or {}
        status = str(health.get("status", "unknown"))
        rows.append(
            [
                agent["name"],
                str(agent.get("pattern", "")),
                str(len(agent.get("tools") or [])),
                status,
            ]
        )
    text = table(["NAME", "PATTERN", "TOOLS", "HEALTH"], rows, style)
    if style.enabled:  # colour the health column only, after alignment
        lines = text.split("\n")
        for i, row in enumerate(rows, start=1):
            status = row[3]
            head, _, _ = lines[i].rpartition(status)
            lines[i] = head + style(status, colours.get(status, "red"))
        text = "\n".join(lines)
    print(text)
    return 0


def _new(args: argparse.Namespace) -> int:
    from astromesh_ray.cli_new import new_command

    return new_command(args)


def _ingest(args: argparse.Namespace) -> int:
    from astromesh_ray.core.memory.factory import memory_factory
    from astromesh_ray.core.rag.files import ProgressBar, collect_files, read_documents, summary
    from astromesh_ray.core.rag.pipeline import RagPipelines
    from astromesh_ray.spec import load_from_environment

    loaded = load_from_environment(args.config, args.agents)
    pipelines = RagPipelines(loaded.rag_pipelines, memory_factory(loaded))
    if args.pipeline not in pipelines.specs:
        pipelines.get(args.pipeline)  # raises, naming the pipelines there are
    loaders = pipelines.specs[args.pipeline].spec.loaders
    documents = read_documents(collect_files(args.paths, loaders))
    if not documents:
        print(f"error: no files to ingest in {' '.join(map(str, args.paths))}", file=sys.stderr)
        print("hint: this pipeline reads " + ", ".join(loaders) + " files", file=sys.stderr)
        return 1

    async def once() -> Any:
        try:
            bar = ProgressBar(sys.stderr, args.pipeline)
            return await pipelines.get(args.pipeline).ingest(documents, bar)
        finally:
            await pipelines.memory.aclose()

    print(summary(asyncio.run(once())))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from astromesh_ray.core.auth import KeyRing
    from astromesh_ray.serve.auth import INSECURE_ENV
    from astromesh_ray.serve.local import serve_forever
    from astromesh_ray.spec import load_from_environment

    loaded = load_from_environment(args.config, args.agents)
    api = loaded.runtime.spec.api
    host = args.host or (api.host if api else "127.0.0.1")
    auth = loaded.runtime.spec.auth
    insecure = args.insecure or auth.insecure
    keys = len(KeyRing.from_spec(auth))
    cli_keys.check_exposure(host, keys, insecure)
    if not keys:
        reach = "every client (--insecure)" if insecure else "loopback clients only"
        print(
            f"astromesh: warning: no API keys configured: the API is open, to {reach}; "
            "create keys with `astromesh keys create`",
            file=sys.stderr,
        )
    if insecure:  # the local cluster's workers (the gateway) inherit it
        os.environ[INSECURE_ENV] = "1"
    serve_forever(
        loaded,
        # The directories actually loaded (flags, environment or defaults).
        config_dir=loaded.root,
        agents_dir=loaded.agents_dir,
        host=host,
        port=args.port or (api.port if api else 8000),
        address=args.address,
        watch=args.watch,
    )
    return 0


def _deploy_config(args: argparse.Namespace) -> int:
    from astromesh_ray.serve.builders import deploy_config, portable_path
    from astromesh_ray.spec import load_from_environment

    loaded = load_from_environment(args.config, args.agents)
    body = deploy_config(
        loaded,
        portable_path(loaded.root),
        agents_dir=portable_path(loaded.agents_dir),
        host=args.host,
        port=args.port,
    )
    header = "# Generated by `astromesh deploy-config`; a test checks it matches config/.\n"
    print(header + yaml.safe_dump(body, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
