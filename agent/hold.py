"""``ferry hold``: what a backup or restore pod runs. It keeps the pod (and so its volume) in place on a node
until the pod is deleted, and exits at once on SIGTERM or SIGINT so the deletion does not wait out the
grace period.

It imports nothing else of Ferry (such a pod holds no credentials and needs no client), and blocks in
``sigwait``, using no CPU. As PID 1 of a container, signals without a handler would be ignored: blocking
them and waiting for them is what makes SIGTERM end it.
"""

from __future__ import annotations

import signal
import sys


def hold() -> int:
    """Block until SIGTERM or SIGINT arrives; returns the exit status (0)."""
    wanted = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    sys.stderr.write("ferry: holding this pod's volumes until SIGTERM\n")
    sys.stderr.flush()
    signal.sigwait(wanted)
    return 0
