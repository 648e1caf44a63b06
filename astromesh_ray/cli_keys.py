"""``astromesh keys create`` (a new API key, printed once) and ``astromesh keys hash``,
and the check ``serve`` makes before it listens: an open server (no keys) binds
loopback only, unless ``--insecure``."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

import yaml

from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.auth import ACTIONS, KEY_ID_PATTERN, ApiKeySpec


def add_parser(sub: Any) -> None:
    """The ``keys`` command and its subcommands."""
    p = sub.add_parser(
        "keys",
        help="create API keys (printed once; the server keeps only their hash)",
        description="API keys for the gateway: `keys create` prints a new key once, and "
        "the entry for runtime.yaml spec.auth.keys (or $ASTROMESH_API_KEYS) holding only "
        "its hash.",
    )
    keys = p.add_subparsers(dest="keys_command", required=True)
    c = keys.add_parser("create", help="make a new key; print it and its runtime.yaml entry")
    c.add_argument("id", help="the key's name (1-32 letters, digits and . _ -)")
    c.add_argument(
        "--agents", default="", help='comma-separated agent names, or "*" for every agent'
    )
    c.add_argument("--namespaces", default="", help="comma-separated agent namespaces")
    c.add_argument(
        "--actions",
        default="run",
        help="comma-separated: " + ", ".join(ACTIONS) + " (default: run)",
    )
    c.add_argument(
        "--rate-limit",
        metavar="N/SECONDS",
        help="at most N requests per SECONDS, e.g. 60/60 (default: spec.auth.rate_limit)",
    )
    c.add_argument("--json", action="store_true", help="print the key and entry as one JSON")
    c.set_defaults(handler=_create)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _rate_limit(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    requests, _, window = text.partition("/")
    try:
        return {"requests": int(requests), "window_s": float(window or 60)}
    except ValueError:
        raise ConfigError(
            f"--rate-limit {text!r} is not N/SECONDS", hint="e.g. --rate-limit 60/60"
        ) from None


def _create(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from astromesh_ray.core.auth import new_key

    token, digest = new_key()
    entry: dict[str, Any] = {"id": args.id, "hash": digest}
    for field in ("agents", "namespaces"):
        values = _split(getattr(args, field))
        if values:
            entry[field] = values
    entry["actions"] = _split(args.actions)
    limit = _rate_limit(args.rate_limit)
    if limit:
        entry["rate_limit"] = limit
    try:
        ApiKeySpec.model_validate(entry)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'key'}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigError(
            "the key cannot be made: " + "; ".join(problems),
            hint=f"id matches {KEY_ID_PATTERN}; actions: {', '.join(ACTIONS)}",
        ) from None
    if args.json:
        print(json.dumps({"key": token, "entry": entry}))
        return 0
    print(token)
    print(
        "\nThe key above is shown once: the server keeps only its hash.  Add this entry "
        "to config/runtime.yaml under spec.auth.keys (or to $ASTROMESH_API_KEYS):\n",
        file=sys.stderr,
    )
    print(yaml.safe_dump([entry], sort_keys=False), end="", file=sys.stderr)
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys: int, insecure: bool) -> None:
    """Refuse to bind ``host`` beyond loopback with no keys, unless ``insecure``."""
    if keys or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"no API keys are configured: serving on {host} would open every agent to the network",
        hint="create keys (astromesh keys create) into runtime.yaml spec.auth.keys or "
        "$ASTROMESH_API_KEYS; or bind 127.0.0.1; or pass --insecure",
    )
