"""The ``ferry`` executable's first module: Ctrl-C while the rest of Ferry is still being imported (aiohttp,
botocore: most of a second) ends like Ctrl-C at any other moment, in one line and exit status 130, not
in a traceback. Nothing else happens here; ``agent.cli.main`` does the work."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["hold"]:  # a restore pod: start at once, import nothing it does not need
        from agent.hold import hold  # noqa: PLC0415

        return hold()
    try:
        from agent.cli import main as run  # noqa: PLC0415 - imported here so an interrupt can be caught
    except KeyboardInterrupt:
        sys.stderr.write("ferry: interrupted\n")
        sys.stderr.flush()
        os._exit(130)  # as agent.cli.interrupted: not through a teardown that could raise it again
    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
