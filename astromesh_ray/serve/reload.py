"""Hot reload: ``astromesh apply`` and ``astromesh serve --watch``.

A configuration directory is applied to the running Serve instance in three steps,
and refused before the first one changes anything when it does not validate:

1. check it as ``astromesh validate`` does (``check_config``): every YAML issue,
   then what ``check_buildable`` and the deployment plan refuse;
2. build every application of the plan here (the builders' own checks run now)
   and fingerprint what each would run (``serve/fingerprint.py``);
3. run the applications whose fingerprint differs from the deployed one (added or
   changed), wait for them, then delete the applications the plan no longer has
   (``serve/local.py``'s ``delete_stale_apps``).

An application left as it was keeps its replicas (``serve.run`` would restart
them), so the requests it is serving go on.  One agent's prompt changing redeploys
that agent alone: the gateway only gets what ``describe_agent`` shows of agents,
and an agent only the provider entries it names.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from astromesh_ray.core.build import check_buildable
from astromesh_ray.errors import AstromeshError, ConfigError
from astromesh_ray.serve.builders import BUILDERS, plan
from astromesh_ray.serve.fingerprint import (
    AppRecord,
    deployed_records,
    fingerprint,
    is_current,
    record_deployed,
)
from astromesh_ray.serve.local import delete_stale_apps
from astromesh_ray.spec import LoadedConfig
from astromesh_ray.spec.validation import validate_dirs

Action = Literal["added", "changed", "unchanged", "removed"]

# An application in one of these states is run again even when its fingerprint is
# the deployed one: what it runs is not running.
_BROKEN = ("DEPLOY_FAILED", "UNHEALTHY")
# Still on their way: waited for.
_PENDING = ("NOT_STARTED", "DEPLOYING")


@dataclass(frozen=True)
class Refusal:
    """A configuration that does not validate: its errors, as ``astromesh validate``
    prints them.  Nothing was deployed or deleted."""

    lines: list[str]


@dataclass(frozen=True)
class AppChange:
    """What a reload did to one application, and its status after."""

    name: str
    action: Action
    status: str = ""
    note: str = ""


@dataclass(frozen=True)
class Reloaded:
    """A configuration applied: one ``AppChange`` per application, in plan order
    (removed ones last)."""

    changes: list[AppChange]

    @property
    def apps(self) -> list[str]:
        """The applications of this configuration (none removed)."""
        return [c.name for c in self.changes if c.action != "removed"]

    @property
    def failed(self) -> list[AppChange]:
        """Applications run now that failed to deploy (or are gone)."""
        return [c for c in self._run() if c.status in (*_BROKEN, "MISSING")]

    @property
    def pending(self) -> list[AppChange]:
        """Applications run now that were still deploying when the wait ended."""
        return [c for c in self._run() if c.status in _PENDING]

    def _run(self) -> list[AppChange]:
        return [c for c in self.changes if c.action in ("added", "changed")]


def check_config(config_dir: Path | None, agents_dir: Path | None = None) -> LoadedConfig | Refusal:
    """``config_dir`` (and ``agents_dir``) loaded and checked as ``astromesh validate``
    checks them: the configuration, or its errors."""
    validation = validate_dirs(config_dir, agents_dir)
    if validation.issues:
        lines = [issue.render() for issue in validation.issues]
        return Refusal([*lines, f"{len(lines)} error(s)"])
    (check,) = validation.checks
    loaded = check.config
    assert loaded is not None  # validate_dirs always pairs the agents with their config
    try:
        check_buildable(
            loaded.agents.values(), loaded.providers, known=loaded.agents, rag=loaded.rag_pipelines
        )
        plan(loaded, None)  # provider deployments declared twice, in-cluster vLLM options
    except ConfigError as exc:
        return _refusal(exc)
    return loaded


def _refusal(exc: ConfigError) -> Refusal:
    found = exc.details.get("problems")
    problems = [str(p) for p in found] if isinstance(found, list) else [exc.message]
    lines = f"error: {chr(10).join(dict.fromkeys(problems))}".split("\n")
    return Refusal(lines + ([f"hint: {exc.hint}"] if exc.hint else []))


def reload(
    config_dir: Path | None, agents_dir: Path | None = None, *, timeout_s: float = 300.0
) -> Reloaded | Refusal:
    """Check ``config_dir`` and apply it to the running Serve instance
    (``apply_config``), or refuse it, changing nothing."""
    checked = check_config(config_dir, agents_dir)
    if isinstance(checked, Refusal):
        return checked
    try:
        return apply_config(
            checked, config_dir=config_dir, agents_dir=agents_dir, timeout_s=timeout_s
        )
    except ConfigError as exc:  # a builder's check: raised before anything was run
        return _refusal(exc)


def apply_config(
    loaded: LoadedConfig,
    *,
    config_dir: Path | None,
    agents_dir: Path | None = None,
    timeout_s: float = 300.0,
) -> Reloaded:
    """Run the added and changed applications of ``loaded`` (on the Serve instance
    this process is connected to), wait up to ``timeout_s`` for them to run, then
    delete the applications the plan dropped.  Unchanged applications are left
    alone.  Every application is built before any is run: a builder's
    ``ConfigError`` leaves the running version as it is."""
    resolved_config = str(config_dir.resolve()) if config_dir else None
    resolved_agents = str(agents_dir.resolve()) if agents_dir else None
    planned = plan(loaded, resolved_config, resolved_agents)
    built = {app.name: BUILDERS[app.builder](app.args) for app in planned}
    fingerprints = {name: fingerprint(application) for name, application in built.items()}
    running = running_apps()
    actions = diff(list(built), fingerprints, running, deployed_records())
    to_run = [app for app in planned if actions[app.name][0] != "unchanged"]
    done: dict[str, str | None] = {}
    try:
        for app in to_run:
            application = built[app.name]
            serve.run(application, name=app.name, route_prefix=app.route_prefix, blocking=False)
            done[app.name] = fingerprints[app.name]
    finally:  # what was run is recorded, even when Serve refused a later one
        if done:
            record_deployed(done)
    statuses = {name: now.status for name, now in running.items()}
    statuses.update(wait_for(done, timeout_s))
    # After the new gateway is up: it no longer routes to what is deleted here.
    removed = delete_stale_apps(keep=[app.name for app in planned])
    changes = [
        AppChange(app.name, action, statuses.get(app.name, ""), note)
        for app in planned
        for action, note in [actions[app.name]]
    ]
    return Reloaded(changes + [AppChange(name, "removed") for name in removed])


@dataclass(frozen=True)
class Running:
    """An application on the Serve instance: its status and creation time."""

    status: str
    created_s: float


def running_apps() -> dict[str, Running]:
    """Every application of the Serve instance this process is connected to."""
    return {
        name: Running(_status(app.status), app.last_deployed_time_s)
        for name, app in serve.status().applications.items()
    }


def _status(status: object) -> str:
    # ApplicationStatus is a str Enum: its value, not "ApplicationStatus.RUNNING".
    return str(getattr(status, "value", status))


def diff(
    names: Iterable[str],
    fingerprints: Mapping[str, str | None],
    running: Mapping[str, Running],
    records: Mapping[str, AppRecord],
) -> dict[str, tuple[Action, str]]:
    """For each application of ``names``, whether it is added, changed or unchanged,
    given the fingerprints of what it would run now, what is ``running`` and the
    ``records`` of what was deployed (with a note on why an application whose
    fingerprint is unchanged is run again)."""
    found: dict[str, tuple[Action, str]] = {}
    for name in names:
        now = running.get(name)
        if now is None:
            found[name] = ("added", "")
        elif now.status in _BROKEN:
            found[name] = ("changed", f"was {now.status}")
        elif is_current(records.get(name), fingerprints.get(name), now.created_s):
            found[name] = ("unchanged", "")
        else:
            found[name] = ("changed", "")
    return found


def wait_for(names: Iterable[str], timeout_s: float, poll_s: float = 0.5) -> dict[str, str]:
    """The status of each application once none is still deploying, or once
    ``timeout_s`` passed (0: at once)."""
    names = list(names)
    deadline = time.monotonic() + timeout_s
    while True:
        running = running_apps()
        statuses = {n: running[n].status if n in running else "MISSING" for n in names}
        pending = [n for n, s in statuses.items() if s in _PENDING]
        if not pending or time.monotonic() >= deadline:
            return statuses
        time.sleep(poll_s)


def render(result: Reloaded | Refusal) -> str:
    """The table ``astromesh apply`` prints (or the refusal's errors)."""
    if isinstance(result, Refusal):
        return "\n".join(result.lines)
    from astromesh_ray.cli_output import table

    rows = [[c.name, c.action, c.status or "-", c.note] for c in result.changes]
    actions: tuple[Action, ...] = ("added", "changed", "removed", "unchanged")
    summary = ", ".join(f"{sum(1 for c in result.changes if c.action == a)} {a}" for a in actions)
    return table(["APPLICATION", "CHANGE", "STATUS", "NOTE"], rows) + f"\n{summary}"


def snapshot(*dirs: Path | None) -> dict[str, tuple[int, int, str]]:
    """Every YAML file under ``dirs`` (recursively): its modification time, size and
    content hash, by path."""
    found: dict[str, tuple[int, int, str]] = {}
    for directory in dirs:
        if directory is None or not directory.is_dir():
            continue
        for path in sorted({*directory.rglob("*.yaml"), *directory.rglob("*.yml")}):
            try:
                stat = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:  # removed between the listing and the read
                continue
            found[str(path)] = (stat.st_mtime_ns, stat.st_size, digest)
    return found


@dataclass
class Watcher:
    """``astromesh serve --watch``: reloads ``config_dir`` (and ``agents_dir``) when
    its YAML files change.  ``poll`` looks once; ``run`` polls until ``stop``.

    A change is applied once the files have stayed the same for one more poll (an
    editor saving several files is reloaded once).  A configuration refused, or
    changed again while it was loaded, is not retried until the files change."""

    config_dir: Path | None
    agents_dir: Path | None = None
    timeout_s: float = 300.0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    # The application names after the last reload (None: none yet).
    apps: list[str] | None = None

    def __post_init__(self) -> None:
        self._seen = self._snapshot()  # what is deployed (or was refused)
        self._pending: dict[str, tuple[int, int, str]] | None = None

    def _snapshot(self) -> dict[str, tuple[int, int, str]]:
        return snapshot(self.config_dir, self.agents_dir)

    def poll(self) -> Reloaded | Refusal | None:
        """Reload if the files changed (and settled) since the last reload; the result,
        or None when nothing was done."""
        now = self._snapshot()
        if now == self._seen:
            self._pending = None
            return None
        if now != self._pending:  # changed since the last poll: wait for it to settle
            self._pending = now
            return None
        print("astromesh: configuration changed, reloading", file=self.out, flush=True)
        try:
            result = reload(self.config_dir, self.agents_dir, timeout_s=self.timeout_s)
        finally:
            # Not tried again until the files change; unless they changed while
            # loading: then what was loaded may be half of an edit.
            if self._snapshot() == now:
                self._seen = now
            self._pending = None
        if isinstance(result, Refusal):
            print(render(result), file=self.err, flush=True)
            print(
                "astromesh: configuration refused; the running version stays",
                file=self.err,
                flush=True,
            )
        else:
            self.apps = result.apps
            print(render(result), file=self.out, flush=True)
        return result

    def run(self, interval_s: float = 1.0, stop: threading.Event | None = None) -> None:
        """Poll every ``interval_s`` until ``stop`` is set (or forever).  A reload that
        Serve or Ray fails (an application it refuses, a cluster gone) is printed and
        the watch goes on: the server keeps running what it runs."""
        stop = stop or threading.Event()
        while not stop.wait(interval_s):
            try:
                self.poll()
            except (AstromeshError, RayError, RayServeException) as exc:
                print(f"astromesh: reload failed: {exc}", file=self.err, flush=True)
