"""The CLI is interruptible whatever its parent left it: a test runner or a shell's
background job passes an ignored SIGINT on across exec, and `astromesh serve` then
never shut down (nor `chat` stopped an answer)."""

from __future__ import annotations

import signal
import subprocess
import sys

from astromesh_ray import cli


def test_ctrl_c_and_sigterm_raise_keyboard_interrupt_even_when_inherited_ignored() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cli._interruptible()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_a_child_started_with_sigint_ignored_still_stops_on_it() -> None:
    # What `astromesh serve` does in its main thread, in a child whose parent
    # ignored SIGINT: it must end with KeyboardInterrupt, not sleep on.
    code = (
        "import os, signal, time\n"
        "from astromesh_ray import cli\n"
        "cli._interruptible()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout.strip() == "interrupted", proc.stderr
