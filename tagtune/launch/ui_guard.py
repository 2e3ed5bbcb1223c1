"""``python -m tagtune.launch.ui_guard PARENT_PID -- CMD ...``: run a UI server that cannot
outlive ``tagtune ui``.

``tagtune ui`` starts each server (``mlflow ui``, ``optuna-dashboard``) through this guard, in a
session of its own. The guard asks the kernel for SIGTERM when its parent dies (Linux's
``PR_SET_PDEATHSIG``: it fires even when ``tagtune ui`` is killed with SIGKILL, which no handler
sees), starts the server in its own process group, and on SIGTERM, SIGHUP or SIGINT ends that
whole group: the server and its workers (``mlflow ui`` runs uvicorn as a child process, which a
parent-death signal on ``mlflow`` alone would leave holding the port). It imports nothing heavy.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE_S = 2.0  # a UI server holds no state worth a longer wait: then SIGKILL


def parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[argv.index("--") + 1:]
    parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # died before we asked: nobody would tell us
        return 0
    group = os.getpgrp()  # ours: tagtune ui started us as a session leader
    server = subprocess.Popen(command)  # same group: one killpg ends it and its workers

    def end(signum=None, frame=None) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # the group's signal below reaches us too
        try:
            os.killpg(group, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while server.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.killpg(group, signal.SIGKILL)  # whatever is left, this guard included

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, end)
    rc = server.wait()
    # The server ended on its own: its workers go with it, and its exit code is ours.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(group, signal.SIGTERM)
    print(f"tagtune ui: {command[0]} ended (exit {rc})", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
