"""``PathPolicy``: where the file tools may read and write (``permissions.filesystem``).

A path the model gives is resolved first (``~`` expanded, a relative path taken
against the agent's ``workdir``, symlinks and ``..`` resolved by ``realpath``) and
only then checked against the roots, component by component (``/data/config-evil``
is not under ``/data/config``).  Roots are resolved the same way when the policy is
built, so a root that is itself a symlink works.

Write roots are **not** readable unless they are also listed in ``read``: granting
a drop directory to write reports into does not grant reading what else is in it
(least privilege; the error names the setting to add).  A refusal shows the path
as the model gave it and the allowed roots, never what a symlink in it resolves to
(``/proc/self/cwd`` would otherwise tell where the process runs).

A check on a path string is not enough against a symlink swapped in after it: the
file is then opened by walking from its root one component at a time with
``O_NOFOLLOW`` (``O_DIRECTORY`` for each directory), each step relative to the
previous one's file descriptor, so what is opened is what was checked even if the
tree changes in between (``open_dir``/``open_file``).  The roots themselves are the
operator's and trusted.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from astromesh_ray.errors import ToolError
from astromesh_ray.spec.agent import FilesystemPermissionsSpec

Access = Literal["read", "write"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class Target:
    """A checked path: ``base`` (a root, or a file root's directory) and the
    components below it, each without symlinks or ``..``."""

    path: Path
    base: Path
    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else self.path.name


class PathPolicy:
    """The readable and writable roots of one agent (see the module docstring)."""

    def __init__(
        self,
        read: Sequence[str],
        write: Sequence[str],
        *,
        workdir: Path,
        configured: bool = True,
    ) -> None:
        self.workdir = Path(os.path.realpath(os.path.expanduser(workdir)))
        self.read_roots = tuple(self._root(r) for r in read)
        self.write_roots = tuple(self._root(w) for w in write)
        self.configured = configured

    @classmethod
    def from_permissions(
        cls, filesystem: FilesystemPermissionsSpec | None, workdir: Path
    ) -> PathPolicy:
        """The policy of ``spec.permissions.filesystem`` (``None``: nothing allowed)."""
        if filesystem is None:
            return cls((), (), workdir=workdir, configured=False)
        return cls(filesystem.read, filesystem.write, workdir=workdir)

    def _root(self, raw: str) -> Path:
        return Path(os.path.realpath(self.workdir / os.path.expanduser(raw)))

    def resolve(self, raw: str) -> Path:
        """``raw`` as an absolute path with every symlink and ``..`` resolved."""
        if "\x00" in raw:
            raise ToolError("the path contains a NUL byte", hint="give a plain file path")
        if not raw.strip():
            raise ToolError("the path is empty", hint="give a file path")
        return Path(os.path.realpath(self.workdir / os.path.expanduser(raw)))

    def check(self, raw: str, access: Access) -> Target:
        """The resolved ``raw`` if ``access`` is allowed there, else a ``ToolError``
        naming the path and the allowed roots."""
        path = self.resolve(raw)
        roots = self.read_roots if access == "read" else self.write_roots
        for root in roots:
            if path == root:
                return Target(path, root.parent, (root.name,))
            if path.is_relative_to(root):
                return Target(path, root, path.relative_to(root).parts)
        raise self._refusal(raw, path, access)

    def _refusal(self, raw: str, path: Path, access: Access) -> ToolError:
        setting = f"spec.permissions.filesystem.{access}"
        # The path as the model gave it, never its resolved target: a symlink such as
        # /proc/self/cwd would otherwise reveal where it points.
        shown = repr(raw)
        if not self.configured:
            return ToolError(
                f"{access} access to {shown} is refused: this agent has no filesystem permissions",
                hint="the operator must list directories in spec.permissions.filesystem",
            )
        roots = self.read_roots if access == "read" else self.write_roots
        allowed = ", ".join(str(r) for r in roots) or "(none)"
        hint = f"use a path under one of: {allowed}"
        if access == "read" and any(path.is_relative_to(w) for w in self.write_roots):
            hint += f"; {raw!r} is only writable (add it to {setting} to read it)"
        return ToolError(f"{access} access to {shown} is outside {setting}", hint=hint)


def open_dir(base: Path, parts: Sequence[str], *, create: bool = False) -> int:
    """A descriptor of ``base/parts...``, every component opened with
    ``O_NOFOLLOW`` below the (trusted) ``base``; ``create`` makes missing ones."""
    fd = os.open(base, _DIR_FLAGS)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(target: Target, flags: int, mode: int = 0o666) -> int:
    """Open the checked ``target`` without following any symlink below its base."""
    parent = open_dir(target.base, target.parts[:-1])
    try:
        return os.open(
            target.name, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode, dir_fd=parent
        )
    finally:
        os.close(parent)


def os_failure(raw: str, exc: OSError) -> ToolError:
    """An ``OSError`` on ``raw`` as what the model reads.  ``ELOOP``/``ENOTDIR`` mean a
    symlink appeared where the check saw none: reported as a refusal."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return ToolError(
            f"{raw!r} changed while it was opened (a symlink where a file or directory "
            "was): refused",
            hint="give the path of a regular file",
        )
    if exc.errno == errno.ENOENT:
        return ToolError(f"no such file: {raw!r}")
    if exc.errno == errno.EISDIR:
        return ToolError(f"{raw!r} is a directory", hint="give the path of a file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ToolError(f"permission denied by the operating system: {raw!r}")
    return ToolError(f"cannot access {raw!r}: {exc.strerror or exc}")
