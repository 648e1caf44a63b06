"""``read_file`` and ``write_file``: text files, confined to
``spec.permissions.filesystem`` (``core/tools/paths.py`` resolves and checks every
path, then opens it without following symlinks).

Both do their I/O in a worker thread: a large file on a slow disk must not stall
the other runs of the replica.  ``write_file`` declares side effects, so under
``permissions.execution.dry_run`` it is described, not made.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import stat
import uuid
from typing import Any, Literal

import pydantic

from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.builtins.schema_tool import (
    SchemaTool,
    ToolConfig,
    json_result,
    parse_config,
)
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.paths import PathPolicy, Target, open_dir, open_file, os_failure
from astromesh_ray.errors import ToolError
from astromesh_ray.spec.tools import BuiltinToolSpec

_SNIFF = 8192  # bytes looked at for a NUL: the usual "is it binary" test


class FileConfig(ToolConfig):
    """``config`` of ``read_file`` and ``write_file``."""

    max_bytes: int = pydantic.Field(
        default=1_000_000,
        gt=0,
        description="read_file: bytes read at most (the rest is cut, and the model told); "
        "write_file: the largest content accepted.",
    )


def _policy(env: ToolEnv) -> PathPolicy:
    permissions = env.agent.spec.permissions
    return PathPolicy.from_permissions(permissions.filesystem if permissions else None, env.workdir)


def _codec(encoding: str) -> str:
    """The name of the text encoding ``encoding``: a bytes-to-bytes or str-to-str codec
    (``zlib_codec``, ``hex_codec``, ``rot13``...) is refused, not run."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise ToolError(f"unknown encoding {encoding!r}", hint="use e.g. 'utf-8'") from None
    if not info._is_text_encoding:
        raise ToolError(
            f"{encoding!r} is not a text encoding", hint="use a text encoding, e.g. 'utf-8'"
        )
    return info.name


class ReadFileTool(SchemaTool):
    """Read a text file under ``permissions.filesystem.read``."""

    def __init__(self, policy: PathPolicy, max_bytes: int) -> None:
        super().__init__(
            "read_file",
            "Read the contents of a local text file (text, CSV, JSON, YAML, Markdown).",
            {
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "File path, relative to the working directory or absolute.",
                    },
                    "encoding": {
                        "type": "string",
                        "default": "utf-8",
                        "description": "Text encoding of the file.",
                    },
                },
                "required": ["path"],
                "additionalProperties": False,
            },
        )
        self.policy = policy
        self.max_bytes = max_bytes

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        path: str = arguments["path"]
        encoding = _codec(arguments["encoding"])
        target = self.policy.check(path, "read")
        data, size = await asyncio.to_thread(self._read, path, target)
        if b"\x00" in data[:_SNIFF]:
            raise ToolError(
                f"{path!r} is a binary file ({size} bytes): read_file returns text only"
            )
        truncated = size > len(data)
        try:
            text = codecs.getincrementaldecoder(encoding)().decode(data, final=not truncated)
        except UnicodeDecodeError as exc:
            raise ToolError(
                f"{path!r} is not {encoding} text (byte {exc.start}): a binary file, or "
                "another encoding",
                hint="give the file's encoding, e.g. encoding: latin-1",
            ) from None
        except (UnicodeError, LookupError) as exc:  # e.g. utf-16 without a BOM, 'undefined'
            raise ToolError(
                f"{path!r} cannot be decoded as {encoding}: {exc}",
                hint="give the file's encoding, e.g. encoding: latin-1",
            ) from None
        meta = {"path": path, "size": size, "encoding": encoding, "truncated": truncated}
        if truncated:
            text += (
                f"\n[truncated: the file is {size} bytes; read_file returns the first "
                f"{self.max_bytes} (config max_bytes)]"
            )
        return ToolResult(content=text, data=meta)

    def _read(self, raw: str, target: Target) -> tuple[bytes, int]:
        try:
            # O_NONBLOCK: opening a FIFO must not hang the thread (refused below).
            fd = open_file(target, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise os_failure(raw, exc) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ToolError(f"{raw!r} is a directory", hint="give the path of a file")
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{raw!r} is not a regular file")
            chunks: list[bytes] = []
            left = self.max_bytes
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            return data, max(info.st_size, len(data))
        except OSError as exc:
            raise os_failure(raw, exc) from None
        finally:
            os.close(fd)


class WriteFileTool(SchemaTool):
    """Write a text file under ``permissions.filesystem.write``: an overwrite is atomic
    (a temporary file in the same directory, then ``os.replace``), an append adds to
    the end.  Missing parent directories are created, below the write root only."""

    side_effects = True

    def __init__(self, policy: PathPolicy, max_bytes: int) -> None:
        super().__init__(
            "write_file",
            "Write text content to a local file (replacing it, or appending to it).",
            {
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "File path, relative to the working directory or absolute.",
                    },
                    "content": {"type": "string", "description": "The text to write."},
                    "mode": {
                        "type": "string",
                        "enum": ["overwrite", "append"],
                        "default": "overwrite",
                        "description": "overwrite replaces the file; append adds to its end.",
                    },
                    "encoding": {
                        "type": "string",
                        "default": "utf-8",
                        "description": "Text encoding to write.",
                    },
                },
                "required": ["path", "content"],
                "additionalProperties": False,
            },
        )
        self.policy = policy
        self.max_bytes = max_bytes

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        path: str = arguments["path"]
        encoding = _codec(arguments["encoding"])
        mode: Literal["overwrite", "append"] = arguments["mode"]
        try:
            data = arguments["content"].encode(encoding)
        except UnicodeEncodeError as exc:
            raise ToolError(
                f"the content cannot be written as {encoding} (character {exc.start})"
            ) from None
        except (UnicodeError, LookupError) as exc:  # e.g. idna's "label too long"
            raise ToolError(f"the content cannot be written as {encoding}: {exc}") from None
        if len(data) > self.max_bytes:
            raise ToolError(
                f"the content is {len(data)} bytes; write_file accepts at most "
                f"{self.max_bytes} (config max_bytes)"
            )
        target = self.policy.check(path, "write")
        await asyncio.to_thread(self._write, path, target, data, mode)
        return json_result({"path": path, "bytes_written": len(data), "mode": mode})

    def _write(
        self, raw: str, target: Target, data: bytes, mode: Literal["overwrite", "append"]
    ) -> None:
        try:
            parent = open_dir(target.base, target.parts[:-1], create=True)
        except OSError as exc:
            raise os_failure(raw, exc) from None
        try:
            if mode == "append":
                _append(parent, target.name, data, raw)
            else:
                _replace(parent, target.name, data, raw)
        except OSError as exc:
            raise os_failure(raw, exc) from None
        finally:
            os.close(parent)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _append(parent: int, name: str, data: bytes, raw: str) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
    fd = os.open(name, flags, 0o666, dir_fd=parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ToolError(f"{raw!r} is not a regular file")
        _write_all(fd, data)
    finally:
        os.close(fd)


def _replace(parent: int, name: str, data: bytes, raw: str) -> None:
    try:
        existing: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise ToolError(f"{raw!r} is a directory", hint="give the path of a file")
    temp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
    fd = os.open(temp, flags, 0o666, dir_fd=parent)
    try:
        try:
            if existing is not None and stat.S_ISREG(existing.st_mode):
                # Keep the file's permissions, never its setuid/setgid/sticky bits:
                # new content must not inherit them.
                os.fchmod(fd, stat.S_IMODE(existing.st_mode) & 0o777)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        # Renames the directory entry: a symlink swapped in at ``name`` is replaced,
        # never followed.
        os.replace(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=parent)
        raise


_MOVED = {
    "allowed_paths": "list the directories in spec.permissions.filesystem.read and .write",
}


def read_file(spec: BuiltinToolSpec, env: ToolEnv) -> ReadFileTool:
    """The ``read_file`` built-in of ``env.agent``."""
    config = parse_config(spec, FileConfig, moved=_MOVED)
    return ReadFileTool(_policy(env), config.max_bytes)


def write_file(spec: BuiltinToolSpec, env: ToolEnv) -> WriteFileTool:
    """The ``write_file`` built-in of ``env.agent``."""
    config = parse_config(spec, FileConfig, moved=_MOVED)
    return WriteFileTool(_policy(env), config.max_bytes)
