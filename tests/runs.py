"""Running the `fireflytui` command as a user's shell does, for tests that need a real process."""

from __future__ import annotations

import os
import subprocess
import sys


def cli(*args: str, timeout: float = 120, **options) -> subprocess.CompletedProcess:
    """`fireflytui ARGS...` in a subprocess; `options` go to subprocess.run (umask, stdin...)."""
    return subprocess.run(
        [sys.executable, "-m", "fireflytui.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        **options,
    )
