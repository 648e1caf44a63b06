"""What every benchmark script here shares: the machine it ran on, for its report."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess


def gpu() -> str:
    """The GPUs ``nvidia-smi`` lists, or why there are none."""
    if not shutil.which("nvidia-smi"):
        return "none"
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown (nvidia-smi failed: {exc})"
    return "; ".join(out.stdout.splitlines()[:4]) or "none (nvidia-smi lists no GPU)"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(extra: str = "", gpu_note: str = "") -> list[str]:
    """The date, cores, platform, Python (plus ``extra``), load average and GPU."""
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {os.cpu_count()} cores, {platform.machine()} {platform.system()}, "
        f"Python {platform.python_version()}{extra}, load average {load_average()}",
        f"GPU: {gpu()}{gpu_note}",
    ]
