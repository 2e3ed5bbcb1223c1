"""Real processes for the reliability tests: a Ray cluster of `ray start` nodes, an MLflow server.

Everything started here runs in a session of its own (``start_new_session``) and is
stopped by killing exactly the processes of that session -- never ``ray stop``, which
would also stop the Ray instances of other tests and other users on this machine.
Ray's workers move to process groups of their own, but they keep their session.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
# The head declares a killed node dead within seconds (defaults: ~30 s).
FAST_FAILURE_DETECTION = {"RAY_health_check_initial_delay_ms": "1000",
                          "RAY_health_check_period_ms": "1000",
                          "RAY_health_check_timeout_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Every live process of the session ``sid`` (its leader's pid)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything else of its session; reap it."""
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def base_env(**extra: str) -> dict[str, str]:
    # Not the test session's Ray settings either (its workers' preload: tests/conftest.py), which
    # a user's shell or cluster node does not have.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_preload_python_modules")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def mount_namespace_prefix(hidden: Path) -> list[str] | None:
    """A command prefix that runs its command with ``hidden`` replaced by an empty tmpfs
    (a private mount namespace), so that the command cannot see what is there; None where
    this machine does not allow it (no root, no user namespaces)."""
    for flags in (["-m"], ["-Urm"]):
        probe = subprocess.run(["unshare", *flags, "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", *flags, "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs tagtune-hidden "{hidden}" && exec "$0" "$@"']
    return None


class RayCluster:
    """A Ray cluster of `ray start --block` nodes on this machine, token authentication on."""

    def __init__(self) -> None:
        # Short: Ray's unix sockets live under the temp dir (path limit 107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="tt-ray-", dir="/tmp"))
        token = self.root / "token"
        token.write_text(secrets.token_hex(32))
        self.env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                            **FAST_FAILURE_DETECTION)
        # A driver gets the token but no RAY_AUTH_MODE, like a user's shell: tagtune must
        # switch token authentication on by itself (ray start does, ray.init does not).
        self.driver_env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_MODE"}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def start_node(self, num_cpus: int = 1, prefix: list[str] | None = None,
                   timeout: float = 120) -> subprocess.Popen:
        i = len(self.nodes)
        args = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                f"--num-cpus={num_cpus}", f"--temp-dir={self.root / f'n{i}'}",
                "--dashboard-agent-listen-port=0"]
        if i == 0:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        log = self.root / f"node{i}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([*(prefix or []), *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return proc

    def raylet_pid(self, node: subprocess.Popen) -> int:
        (pid,) = [p for p in session_pids(node.pid) if "/raylet/raylet " in cmdline(p)]
        return pid

    def on_node(self, pid: int, node: subprocess.Popen) -> bool:
        try:
            return os.getsid(pid) == node.pid
        except OSError:
            return False

    def stop(self) -> None:
        for node in reversed(self.nodes):
            kill_session(node)
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over a sqlite store; stop() and start() again at will."""

    def __init__(self, db: Path):
        self.db, self.port = db, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.db}",
                     "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        # No job runner: MLflow 3 starts ~8 huey worker processes for server-side jobs (none
        # used here) -- on 2 cores they slow everything else in the test.
        self.env = {**base_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = db.with_suffix(".log")
        self.cwd = db.parent  # its artifact store (./mlartifacts) next to its database
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[0]} failed:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            kill_session(self.proc)
            self.proc = None


def read_results(trial_dir: Path) -> list[dict]:
    """A trial's Tune results (result.json), skipping a line cut short by a kill."""
    path = trial_dir / "result.json"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out

