"""``PathPolicy``: paths are resolved (``~``, relative, ``..``, symlinks) before they
are checked against the roots, component by component; opening walks below the
root without following symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astromesh_ray.core.tools.paths import PathPolicy, open_dir, open_file
from astromesh_ray.errors import ToolError
from astromesh_ray.spec.agent import FilesystemPermissionsSpec


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "config" / "agents").mkdir(parents=True)
    (tmp_path / "config" / "a.yaml").write_text("a: 1\n")
    (tmp_path / "config-evil").mkdir()
    (tmp_path / "config-evil" / "x.txt").write_text("evil")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "out").mkdir()
    return tmp_path


def policy(tree: Path) -> PathPolicy:
    return PathPolicy(["./config/"], ["./out"], workdir=tree)


def test_relative_roots_are_taken_against_the_workdir(tree: Path) -> None:
    p = policy(tree)
    assert p.read_roots == (tree.resolve() / "config",)
    assert p.write_roots == (tree.resolve() / "out",)
    target = p.check("config/a.yaml", "read")
    assert target.path == tree.resolve() / "config" / "a.yaml"
    assert (target.base, target.parts) == (tree.resolve() / "config", ("a.yaml",))


def test_absolute_path_inside_a_root_is_allowed(tree: Path) -> None:
    assert policy(tree).check(str(tree / "config" / "a.yaml"), "read").parts == ("a.yaml",)


@pytest.mark.parametrize(
    "raw",
    [
        "config/../secret.txt",
        "../secret.txt",
        "config/agents/../../secret.txt",
        "/etc/passwd",
        "config-evil/x.txt",  # shares the root's prefix, not its directory
        "out/../config-evil/x.txt",
    ],
)
def test_escapes_are_refused_with_the_allowed_roots(tree: Path, raw: str) -> None:
    with pytest.raises(ToolError) as err:
        policy(tree).check(raw, "read")
    assert raw in err.value.message
    assert "outside spec.permissions.filesystem.read" in err.value.message
    assert str(tree.resolve() / "config") in (err.value.hint or "")


def test_a_symlink_pointing_out_is_resolved_before_the_check(tree: Path) -> None:
    (tree / "config" / "link.txt").symlink_to(tree / "secret.txt")
    with pytest.raises(ToolError, match=r"outside spec.permissions.filesystem.read"):
        policy(tree).check("config/link.txt", "read")


@pytest.mark.parametrize("access", ["read", "write"])
def test_a_refusal_never_shows_where_a_symlink_points(
    tree: Path, access: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = tree.resolve() / "config-evil"
    (tree / "config" / "link").symlink_to(hidden)
    monkeypatch.chdir(hidden)  # /proc/self/cwd points there
    p = PathPolicy(["./config/"], ["./out"], workdir=tree)
    for raw in ("config/link/x.txt", "/proc/self/cwd", "/proc/self/cwd/x.txt"):
        with pytest.raises(ToolError) as err:
            p.check(raw, access)  # type: ignore[arg-type]
        shown = f"{err.value.message} {err.value.hint or ''}"
        assert repr(raw) in err.value.message
        assert "config-evil" not in shown
        assert "resolved to" not in shown
        roots = p.read_roots if access == "read" else p.write_roots
        assert all(str(r) in (err.value.hint or "") for r in roots)


def test_the_only_writable_hint_shows_the_given_path(tree: Path) -> None:
    (tree / "config" / "drop").symlink_to(tree / "out")
    with pytest.raises(ToolError) as err:
        policy(tree).check("config/drop/r.txt", "read")
    hint = err.value.hint or ""
    assert "'config/drop/r.txt' is only writable" in hint
    assert str(tree.resolve() / "out" / "r.txt") not in hint


def test_a_symlinked_directory_pointing_out_is_refused(tree: Path) -> None:
    (tree / "config" / "sub").symlink_to(tree)
    with pytest.raises(ToolError, match="outside"):
        policy(tree).check("config/sub/secret.txt", "read")


def test_a_symlink_staying_inside_the_root_is_allowed(tree: Path) -> None:
    (tree / "config" / "alias").symlink_to(tree / "config" / "agents")
    target = policy(tree).check("config/alias/new.yaml", "read")
    assert target.parts == ("agents", "new.yaml")


def test_a_root_that_is_itself_a_symlink_works(tree: Path) -> None:
    (tree / "cfg").symlink_to(tree / "config")
    p = PathPolicy(["cfg"], [], workdir=tree)
    assert p.check("config/a.yaml", "read").path == tree.resolve() / "config" / "a.yaml"


def test_nul_bytes_and_empty_paths_are_refused(tree: Path) -> None:
    with pytest.raises(ToolError, match="NUL byte"):
        policy(tree).check("config/a.yaml\x00.txt", "read")
    with pytest.raises(ToolError, match="empty"):
        policy(tree).check("  ", "read")


def test_home_is_expanded(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree))
    assert policy(tree).check("~/config/a.yaml", "read").parts == ("a.yaml",)


def test_write_roots_are_not_readable(tree: Path) -> None:
    p = policy(tree)
    assert p.check("out/r.txt", "write").parts == ("r.txt",)
    with pytest.raises(ToolError) as err:
        p.check("out/r.txt", "read")
    assert "only writable" in (err.value.hint or "")
    with pytest.raises(ToolError, match=r"outside spec.permissions.filesystem.write"):
        p.check("config/a.yaml", "write")


def test_a_file_root_allows_that_file_only(tree: Path) -> None:
    p = PathPolicy(["config/a.yaml"], [], workdir=tree)
    target = p.check("config/a.yaml", "read")
    assert (target.base, target.parts) == (tree.resolve() / "config", ("a.yaml",))
    with pytest.raises(ToolError):
        p.check("config/agents", "read")


def test_no_filesystem_block_refuses_everything(tree: Path) -> None:
    p = PathPolicy.from_permissions(None, tree)
    with pytest.raises(ToolError) as err:
        p.check("config/a.yaml", "read")
    assert "no filesystem permissions" in err.value.message
    assert "spec.permissions.filesystem" in (err.value.hint or "")


def test_from_permissions(tree: Path) -> None:
    p = PathPolicy.from_permissions(FilesystemPermissionsSpec(read=["config"]), tree)
    assert p.check("config/a.yaml", "read").parts == ("a.yaml",)
    with pytest.raises(ToolError, match=r"\(none\)"):
        p.check("out/x", "write")


def test_open_file_refuses_a_symlink_swapped_in_after_the_check(tree: Path) -> None:
    p = policy(tree)
    target = p.check("config/a.yaml", "read")
    (tree / "config" / "a.yaml").unlink()
    (tree / "config" / "a.yaml").symlink_to(tree / "secret.txt")
    with pytest.raises(OSError):  # ELOOP from O_NOFOLLOW
        open_file(target, os.O_RDONLY)


def test_open_dir_refuses_a_directory_swapped_for_a_symlink(tree: Path) -> None:
    target = policy(tree).check("config/agents/x.yaml", "read")
    (tree / "config" / "agents").rmdir()
    (tree / "config" / "agents").symlink_to(tree)
    with pytest.raises(OSError):
        open_file(target, os.O_RDONLY)
    with pytest.raises(OSError):
        open_dir(target.base, target.parts[:-1], create=True)


def test_open_dir_creates_missing_directories_below_the_base(tree: Path) -> None:
    fd = open_dir(tree / "out", ("a", "b"), create=True)
    os.close(fd)
    assert (tree / "out" / "a" / "b").is_dir()
