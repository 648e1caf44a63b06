"""DESIGN.md §2: spec and core never import ray."""

from __future__ import annotations

import subprocess
import sys


def test_core_and_spec_do_not_import_ray() -> None:
    code = (
        "import pkgutil, importlib, sys\n"
        "import astromesh_ray.core, astromesh_ray.spec, astromesh_ray.testing\n"
        "for pkg in (astromesh_ray.core, astromesh_ray.spec):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "import astromesh_ray.testing.scripted\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) > 50  # the walk really imported the packages
