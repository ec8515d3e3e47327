"""Running the ``ferry`` command line as a user does: a separate process, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys


def ferry(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` with the environment (plus ``env``); never raises for its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
