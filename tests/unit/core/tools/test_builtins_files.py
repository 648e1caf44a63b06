"""``read_file`` and ``write_file``: confined to ``permissions.filesystem``, binary
files reported, size limits, atomic overwrite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astromesh_ray.core.tools.base import Tool
from astromesh_ray.errors import ConfigError, ToolError

from .builtin_helpers import call, make_tool, tool_env


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "config" / "agents").mkdir(parents=True)
    (tmp_path / "config" / "a.yaml").write_text("name: a\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "secret.txt").write_text("top secret")
    return tmp_path


def reader(work: Path, **config: object) -> Tool:
    return make_tool("read_file", tool_env(work, read=["./config/", "./docs/"]), **config)


def writer(work: Path, **config: object) -> Tool:
    env = tool_env(work, read=["./config/"], write=["./config/agents/"])
    return make_tool("write_file", env, **config)


async def test_read_file_reads_an_allowed_file(work: Path) -> None:
    result = await call(reader(work), path="config/a.yaml")
    assert result.content == "name: a\n"
    assert result.data == {
        "path": "config/a.yaml",
        "size": 8,
        "encoding": "utf-8",
        "truncated": False,
    }


@pytest.mark.parametrize(
    "path", ["../secret.txt", "config/../secret.txt", "/etc/hostname", "secret.txt"]
)
async def test_read_file_refuses_paths_outside_its_roots(work: Path, path: str) -> None:
    with pytest.raises(ToolError, match=r"outside spec.permissions.filesystem.read"):
        await call(reader(work), path=path)


async def test_read_file_refuses_symlinks_out(work: Path) -> None:
    (work / "docs" / "s.txt").symlink_to(work / "secret.txt")
    (work / "docs" / "up").symlink_to(work)
    for path in ("docs/s.txt", "docs/up/secret.txt"):
        with pytest.raises(ToolError, match=r"outside spec.permissions.filesystem.read") as err:
            await call(reader(work), path=path)
        assert str(work.resolve() / "secret.txt") not in str(err.value)  # not where it points


async def test_read_file_without_filesystem_permissions(work: Path) -> None:
    tool = make_tool("read_file", tool_env(work, filesystem=False))
    with pytest.raises(ToolError) as err:
        await call(tool, path="config/a.yaml")
    assert "spec.permissions.filesystem" in (err.value.hint or "")


async def test_read_file_reports_binary_files(work: Path) -> None:
    (work / "docs" / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ToolError, match="binary file"):
        await call(reader(work), path="docs/img.png")
    (work / "docs" / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ToolError, match="not utf-8 text"):
        await call(reader(work), path="docs/latin.txt")
    result = await call(reader(work), path="docs/latin.txt", encoding="latin-1")
    assert result.content == "café"


async def test_read_file_cuts_at_max_bytes_without_splitting_a_character(work: Path) -> None:
    (work / "docs" / "big.txt").write_text("é" * 10)  # 20 bytes
    result = await call(reader(work, max_bytes=5), path="docs/big.txt")
    assert result.content.startswith("éé\n[truncated: the file is 20 bytes")
    assert result.data["truncated"] is True


async def test_read_file_errors(work: Path) -> None:
    with pytest.raises(ToolError, match="no such file"):
        await call(reader(work), path="docs/missing.txt")
    with pytest.raises(ToolError, match="is a directory"):
        await call(reader(work), path="config/agents")
    with pytest.raises(ToolError, match="unknown encoding"):
        await call(reader(work), path="config/a.yaml", encoding="klingon")
    os.mkfifo(work / "docs" / "pipe")
    with pytest.raises(ToolError, match="not a regular file"):
        await call(reader(work), path="docs/pipe")


async def test_read_file_validates_arguments(work: Path) -> None:
    tool = reader(work)
    with pytest.raises(ToolError, match="path"):
        tool.validate({})
    with pytest.raises(ToolError, match="Additional properties"):
        tool.validate({"path": "x", "mode": "r"})


def test_file_tool_config_errors(work: Path) -> None:
    with pytest.raises(ConfigError) as err:
        reader(work, max_byte=10)
    assert "unknown config key 'max_byte'" in err.value.message
    assert "max_bytes" in (err.value.hint or "")
    with pytest.raises(ConfigError, match=r"config.max_bytes"):
        reader(work, max_bytes=0)
    with pytest.raises(ConfigError) as moved:
        writer(work, allowed_paths=["/tmp"])
    assert "spec.permissions.filesystem" in (moved.value.hint or "")


async def test_write_file_writes_and_creates_parents_inside_the_root(work: Path) -> None:
    tool = writer(work)
    assert getattr(tool, "side_effects", False) is True
    result = await call(tool, path="config/agents/new/b.agent.yaml", content="x: 1\n")
    assert result.data == {
        "path": "config/agents/new/b.agent.yaml",
        "bytes_written": 5,
        "mode": "overwrite",
    }
    assert (work / "config" / "agents" / "new" / "b.agent.yaml").read_text() == "x: 1\n"
    await call(tool, path="config/agents/new/b.agent.yaml", content="y: 2\n", mode="append")
    assert (work / "config" / "agents" / "new" / "b.agent.yaml").read_text() == "x: 1\ny: 2\n"


async def test_write_file_overwrite_is_atomic_and_keeps_the_mode(work: Path) -> None:
    path = work / "config" / "agents" / "c.yaml"
    path.write_text("old")
    path.chmod(0o640)
    before = path.stat().st_ino
    await call(writer(work), path="config/agents/c.yaml", content="new")
    assert path.read_text() == "new"
    assert path.stat().st_ino != before  # a new file renamed over the old one
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["c.yaml"]  # no temp file left


async def test_write_file_is_confined(work: Path) -> None:
    tool = writer(work)
    for path in ("config/a.yaml", "config/agents/../a.yaml", "../x.txt", "/tmp/x.txt"):
        with pytest.raises(ToolError, match=r"outside spec.permissions.filesystem.write"):
            await call(tool, path=path, content="pwned")
    (work / "config" / "agents" / "out").symlink_to(work)
    with pytest.raises(ToolError, match="outside"):
        await call(tool, path="config/agents/out/secret.txt", content="pwned")
    assert (work / "secret.txt").read_text() == "top secret"
    assert (work / "config" / "a.yaml").read_text() == "name: a\n"


async def test_write_file_checks_size_and_encoding(work: Path) -> None:
    with pytest.raises(ToolError, match="at most 4"):
        await call(writer(work, max_bytes=4), path="config/agents/a", content="12345")
    with pytest.raises(ToolError, match="cannot be written as ascii"):
        await call(writer(work), path="config/agents/a", content="é", encoding="ascii")
    assert not (work / "config" / "agents" / "a").exists()


async def test_write_file_onto_a_directory(work: Path) -> None:
    (work / "config" / "agents" / "d").mkdir()
    with pytest.raises(ToolError, match="is a directory"):
        await call(writer(work), path="config/agents/d", content="x")


@pytest.mark.parametrize("encoding", ["zlib_codec", "hex_codec", "bz2_codec", "rot13", "base64"])
async def test_non_text_codecs_are_refused(work: Path, encoding: str) -> None:
    (work / "docs" / "t.txt").write_bytes(b"78 9c not zlib")
    with pytest.raises(ToolError, match="is not a text encoding"):
        await call(reader(work), path="docs/t.txt", encoding=encoding)
    with pytest.raises(ToolError, match="is not a text encoding"):
        await call(writer(work), path="config/agents/t.txt", content="x", encoding=encoding)
    assert not (work / "config" / "agents" / "t.txt").exists()


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("utf-16", b"a" * 10),  # no BOM: UnicodeError, not UnicodeDecodeError
        ("undefined", b"abc"),
        ("punycode", b"\\x"),
    ],
)
async def test_text_codec_failures_are_tool_errors(work: Path, encoding: str, data: bytes) -> None:
    (work / "docs" / "t.txt").write_bytes(data)
    with pytest.raises(ToolError, match=f"cannot be decoded as {encoding}"):
        await call(reader(work), path="docs/t.txt", encoding=encoding)


@pytest.mark.parametrize(("encoding", "content"), [("undefined", "x"), ("idna", "a" * 100)])
async def test_write_codec_failures_are_tool_errors(
    work: Path, encoding: str, content: str
) -> None:
    with pytest.raises(ToolError, match=f"cannot be written as {encoding}"):
        await call(writer(work), path="config/agents/t.txt", content=content, encoding=encoding)
    assert not (work / "config" / "agents" / "t.txt").exists()


async def test_read_file_utf16_with_a_bom(work: Path) -> None:
    (work / "docs" / "u.txt").write_bytes("中文".encode("utf-16"))  # no NUL byte
    result = await call(reader(work), path="docs/u.txt", encoding="utf-16")
    assert result.content == "中文"


async def test_write_file_overwrite_drops_setuid_setgid_and_sticky(work: Path) -> None:
    path = work / "config" / "agents" / "tool.sh"
    path.write_text("#!/bin/sh\n")
    os.chmod(path, 0o7755)
    if path.stat().st_mode & 0o7000 != 0o7000:
        pytest.skip("this filesystem does not keep setuid/setgid bits")
    await call(writer(work), path="config/agents/tool.sh", content="#!/bin/sh\necho new\n")
    mode = path.stat().st_mode
    assert mode & 0o7000 == 0
    assert mode & 0o777 == 0o755
