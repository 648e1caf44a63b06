"""The ``astromesh`` command: validate | schema | run | serve | deploy-config."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from astromesh_ray.errors import AstromeshError, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astromesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            help="config directory (default: $ASTROMESH_CONFIG_DIR, ./config, /etc/astromesh)",
        )
        p.add_argument(
            "--agents", help="agents directory (default: $ASTROMESH_AGENTS_DIR, <config>/agents)"
        )

    p = sub.add_parser("validate", help="check YAML files or directories; list every error")
    p.add_argument("paths", nargs="+", type=Path)
    p.set_defaults(handler=_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of a YAML kind")
    p.add_argument("--kind", default="Agent", choices=["Agent", "ProviderConfig", "RuntimeConfig"])
    p.set_defaults(handler=_schema)

    p = sub.add_parser("run", help="run one turn of an agent in this process (no Ray)")
    p.add_argument("agent")
    p.add_argument("query")
    p.add_argument("--session-id")
    p.add_argument("--context", default="{}", help="JSON object of prompt variables")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    with_config(p)
    p.set_defaults(handler=_run)

    p = sub.add_parser("serve", help="serve the agents over HTTP on a Ray cluster")
    p.add_argument(
        "--host", default=None, help="default: runtime.yaml spec.api.host, else 127.0.0.1"
    )
    p.add_argument(
        "--port", type=int, default=None, help="default: runtime.yaml spec.api.port, else 8000"
    )
    p.add_argument("--address", help="Ray cluster address to join (default: start a local one)")
    with_config(p)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("deploy-config", help="print a Serve config file for `serve deploy`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    with_config(p)
    p.set_defaults(handler=_deploy_config)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from astromesh_ray.core.build import check_buildable
    from astromesh_ray.spec import load_agent, validate_paths

    issues = validate_paths(list(args.paths))
    for issue in issues:
        print(issue.render(), file=sys.stderr)
    if issues:
        print(f"{len(issues)} error(s)", file=sys.stderr)
        return 1
    # The YAML is valid: now check what needs the code (tool imports, templates).
    files = [
        found
        for path in args.paths
        for found in (sorted(path.rglob("*.agent.y*ml")) if path.is_dir() else [path])
        if found.name.endswith((".agent.yaml", ".agent.yml"))
    ]
    check_buildable(load_agent(f) for f in files)
    print(f"ok: {len(files)} agent(s)" if files else "ok")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from astromesh_ray.spec import json_schema

    print(json.dumps(json_schema(args.kind), indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from astromesh_ray.core.build import build_runtime
    from astromesh_ray.core.runtime import RunRequest
    from astromesh_ray.errors import AgentNotFound, InvalidRequest
    from astromesh_ray.spec import load_from_environment

    try:
        context: Any = json.loads(args.context)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"--context is not valid JSON: {exc}") from None
    if not isinstance(context, dict):
        raise InvalidRequest("--context must be a JSON object")
    loaded = load_from_environment(args.config, args.agents)
    if args.agent not in loaded.agents:
        raise AgentNotFound(
            f"no agent named {args.agent!r}",
            hint="loaded agents: " + (", ".join(sorted(loaded.agents)) or "(none)"),
        )
    runtime = build_runtime(loaded.agents[args.agent], loaded.providers)
    request = RunRequest(query=args.query, session_id=args.session_id, context=context)

    async def once() -> dict[str, Any]:
        try:
            return (await runtime.run(request)).to_dict()
        finally:
            await runtime.provider.aclose()

    result = asyncio.run(once())
    print(json.dumps(result, indent=2) if args.json else result["answer"])
    return 0


def _serve(args: argparse.Namespace) -> int:
    from astromesh_ray.serve.local import serve_forever
    from astromesh_ray.spec import load_from_environment

    loaded = load_from_environment(args.config, args.agents)
    api = loaded.runtime.spec.api
    serve_forever(
        loaded,
        # The directories actually loaded (flags, environment or defaults).
        config_dir=loaded.root,
        agents_dir=loaded.agents_dir,
        host=args.host or (api.host if api else "127.0.0.1"),
        port=args.port or (api.port if api else 8000),
        address=args.address,
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
