"""Running the ``ferry`` command line as a user does: a separate process, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

PASSWORD = "correct horse battery staple"
"""The repository password ``ferry`` passes (FERRY_PASSWORD_FILE) unless ``env`` gives another."""


def password_file() -> str:
    """A file holding ``PASSWORD`` (made once per test process)."""
    path = os.path.join(tempfile.gettempdir(), f"ferry-test-password-{os.getpid()}")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(PASSWORD + "\n")
    return path


def ferry(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` with the environment, FERRY_PASSWORD_FILE set to ``password_file()``, and
    ``env`` over both; never raises for its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "FERRY_PASSWORD_FILE": password_file(), **(env or {})},
        check=False,
    )
