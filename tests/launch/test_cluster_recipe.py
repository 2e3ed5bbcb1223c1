"""The cluster recipe (README "Running on a cluster", tagtune/launch/cluster.yaml) as a user runs it.

On loopback: a Ray head with its dashboard and a worker node started with `ray start`, token
authentication from `ray get-auth-token --generate`, the recipe's MLflow server with basic
auth, and studies given to the cluster with the `ray job` CLI as the README writes it.
HOME is a directory of the test's own, so the token and the MLflow credentials live where
the recipe puts them (~/.ray/auth_token, ~/.mlflow/credentials) without touching the user's.
Every process a test starts is stopped by that test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.launch.study import study_trial_ids
from tagtune.launch.tracking import TRIAL_TAG
from tagtune.study import data
from tests.launch.processes import BIN, base_env, cmdline, free_port, kill_session
from tests.launch.test_reliability import slow_study

ROOT = Path(__file__).parents[2]
TRIAL_RUNS = f"tags.`{TRIAL_TAG}` != ''"
SMALL = ["--methods", "b1", "--missing", "0", "--trials", "1", "--replicates", "0", "--epochs", "1",
         "--grace-period", "1", "--quiet"]


def test_cluster_extra_is_what_the_recipe_installs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # The laptop that submits and every node run one Ray: the one tagtune's ray[tune] resolved to.
    assert f"ray[default]=={version('ray')}" in extras["cluster"]
    assert any(d.startswith("mlflow[auth]") for d in extras["cluster"])
    assert "tagtune[cluster]" in extras["dev"]  # so that `make test-long` runs the recipe below

    recipe = yaml.safe_load((ROOT / "tagtune/launch/cluster.yaml").read_text())
    setup = "\n".join(recipe["setup_commands"])
    assert re.search(r"pip install .*-e \"?\S*/tagtune\[cluster\]", setup), setup
    head = "\n".join(recipe["head_start_ray_commands"])
    assert "tagtune.launch.mlflow_server" in head and "0.0.0.0" not in head.split("mlflow_server")[1]
    assert "--include-dashboard=true" in head  # the Jobs API behind `ray job submit`
    starts = [c for c in recipe["head_start_ray_commands"] + recipe["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    # The two secrets reach every node the same way: copied from the laptop by `ray up`.
    assert {"~/.ray/auth_token", "~/.mlflow/credentials"} <= set(recipe["file_mounts"])


def test_recipe_tracks_on_the_heads_postgres_with_several_workers_and_no_password_in_sight():
    recipe = yaml.safe_load((ROOT / "tagtune/launch/cluster.yaml").read_text())
    head_ip = recipe["provider"]["head_ip"]
    (setup,) = recipe["head_setup_commands"]  # the head only: workers need no database
    script = ROOT / "tagtune/launch/postgres_head.sh"
    assert setup == f"bash ~/tagtune/{script.relative_to(ROOT)} {head_ip}"
    body = script.read_text()
    assert "apt-get install -y -qq postgresql" in body
    assert 'set listen_addresses "$HEAD_IP"' in body and "'*'" not in body  # private address only
    assert "createdb -O tagtune" in body and "for db in mlflow mlflow_auth" in body
    (server,) = [c for c in recipe["head_start_ray_commands"] if "mlflow_server" in c]
    argv = server.split("mlflow_server", 1)[1].split()
    uri = argv[argv.index("--backend-store-uri") + 1]
    assert uri == f"postgresql://tagtune@{head_ip}:5432/mlflow"  # no password in it
    assert int(argv[argv.index("--workers") + 1]) > 1
    assert argv[argv.index("--db-password-file") + 1] == "~/.mlflow/db-password"


@pytest.mark.parametrize("args, says", [
    (["--host", "0.0.0.0"], "host: bind the cluster's private address"),
    (["--host", "127.0.0.1"], "credentials: none for the admin user"),
])
def test_mlflow_server_refuses_an_open_server(tmp_path, monkeypatch, capsys, args, says):
    from tagtune.launch import mlflow_server

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as e:
        mlflow_server.main([*args, "--dir", str(tmp_path / "mlflow")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and line.startswith("error: mlflow_server: ") and says in line, line


# --- a local study: its own Ray, whatever Ray's temp dir says ----------------------------------


@pytest.mark.long  # a whole study in a process of its own
@pytest.mark.timeout(300)
def test_local_study_ignores_a_stale_ray_current_cluster(tmp_path, tiny_dataset):
    """A head that died leaves ray_current_cluster behind; a plain ray.init() would try to
    join it and fail. A study without --address (and without RAY_ADDRESS) starts its own."""
    from ray._common.utils import get_default_ray_temp_dir
    from ray._private.services import canonicalize_bootstrap_address
    from ray._private.utils import write_ray_address

    path = data.save(tiny_dataset, tmp_path / "tiny.h5")
    # Short: Ray's unix sockets live under its temp dir (path limit 107 bytes).
    tmp = Path(tempfile.mkdtemp(prefix="tt-stale-", dir="/tmp"))
    env = base_env(RAY_TMPDIR=str(tmp))
    stale = f"127.0.0.1:{free_port()}"  # nothing listens: the head is gone
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp)
    try:  # Ray's own temp dir logic and writer, as `ray start` leaves it
        Path(get_default_ray_temp_dir()).mkdir()
        write_ray_address(stale, get_default_ray_temp_dir())
        # What a plain ray.init() in that environment joins (the fault this test guards):
        assert canonicalize_bootstrap_address(None).endswith(stale.split(":")[1])
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = saved
    driver = subprocess.Popen([sys.executable, "-m", "tagtune", "study", "--data", str(path), "--storage",
                               str(tmp_path / "studies"), *SMALL], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = driver.communicate(timeout=240)
    finally:
        kill_session(driver)
        shutil.rmtree(tmp, ignore_errors=True)
    assert driver.returncode == 0, out[-3000:]
    assert "Connecting to existing Ray cluster" not in out
    assert (tmp_path / "studies" / "study" / "summary.json").exists()


# --- the whole recipe on loopback ---------------------------------------------------------------


class Recipe:
    """The recipe's processes on this machine: Ray head (dashboard on) + worker, MLflow server."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tt-rc-", dir="/tmp"))  # short: socket paths
        self.home = self.root / "home"
        self.home.mkdir()
        # As cluster.yaml runs its nodes: the venv on PATH (for the job's `tagtune`), token mode.
        self.env = base_env(HOME=str(self.home), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
                            RAY_AUTH_MODE="token")
        # The laptop's job CLI: the README's `export RAY_AUTH_MODE=token`.
        self.cli_env = self.env
        self.port, self.dashboard_port, self.mlflow_port = free_port(), free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.procs: list[subprocess.Popen] = []
        self.password = secrets.token_hex(16)

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.root / log, "w") as out:
            proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def _wait(self, proc: subprocess.Popen, log: str, ready, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{log} failed:\n{(self.root / log).read_text()[-3000:]}")
            time.sleep(0.3)

    def start(self) -> None:
        run = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=self.env,
                             capture_output=True, timeout=120)
        assert run.returncode == 0 and (self.home / ".ray" / "auth_token").exists(), run.stderr
        creds = self.home / ".mlflow" / "credentials"
        creds.parent.mkdir()
        creds.write_text(f"[mlflow]\nmlflow_tracking_username = admin\n"
                         f"mlflow_tracking_password = {self.password}\n")
        mlflow = self._spawn([sys.executable, "-m", "tagtune.launch.mlflow_server", "--host", "127.0.0.1",
                              "--port", str(self.mlflow_port), "--dir", str(self.home / "mlflow")],
                             "mlflow.log")
        node = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--num-cpus=1",
                "--dashboard-agent-listen-port=0"]
        head = self._spawn([*node, "--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                            "--include-dashboard=true", f"--dashboard-port={self.dashboard_port}",
                            f"--temp-dir={self.root / 'n0'}"], "head.log")
        self._wait(head, "head.log", lambda: "Ray runtime started" in (self.root / "head.log").read_text())
        worker = self._spawn([*node, f"--address=127.0.0.1:{self.port}", f"--temp-dir={self.root / 'n1'}"],
                             "worker.log")
        self._wait(worker, "worker.log",
                   lambda: "Ray runtime started" in (self.root / "worker.log").read_text())
        self._wait(mlflow, "mlflow.log", lambda: self._answers(self.mlflow_uri + "/health"))

    @staticmethod
    def _answers(url: str) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def job(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), "job", *args[:1], "--address", self.dashboard, *args[1:]],
                              env=self.cli_env, capture_output=True, text=True, timeout=timeout)

    def stop(self, also: str) -> None:
        """Kill every process started here; ``also``: a path in the command line of our jobs."""
        for proc in reversed(self.procs):
            kill_session(proc)
        # A job's driver runs in a session of its own; its watcher kills it within a second of
        # the supervisor's death. Anything of ours still there after that is killed here.
        time.sleep(2)
        ours = (str(self.root), also)
        for pid in [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]:
            if any(p in cmdline(pid) for p in ours):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


def _ended(journal: Path) -> int:
    return journal.read_text().count('"op": "end"') if journal.exists() else 0


# Two trials at a time (one CPU per node), each ~16 x 0.2 s (4,000 clips): after the first trial
# ends, seven more rounds are left (~20 s) -- time enough for `ray job stop` to land mid-search.
# (With 8 trials of 2,000 clips the search could end before the stop did, once a trial's process
# no longer spent ~1 s importing torch._dynamo before its first epoch.)
TRIALS = 16


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_recipe_submit_stop_resume(tmp_path, monkeypatch):
    recipe = Recipe()
    storage = tmp_path / "studies"
    config = slow_study(tmp_path, "recipe", n_train=4000, storage=str(storage), methods=["b1"], missing=[0.4],
                        trials=TRIALS, replicates=1, epochs=16, grace_period=16, checkpoint_every=4)
    study_dir = storage / "recipe"
    journal = study_dir / "mlflow-journal.jsonl"
    try:
        recipe.start()
        # The preflight, against the recipe's server: no credentials, then wrong ones.
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials there
        for user, password, says in [(None, None, "asks for credentials"),
                                     ("admin", "wrong", "refused the credentials (user 'admin')")]:
            for var, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
                if value is None:
                    monkeypatch.delenv(var, raising=False)
                else:
                    monkeypatch.setenv(var, value)
            result = CliRunner().invoke(app, ["study", "--config", str(config), "--mlflow-uri",
                                              recipe.mlflow_uri])
            assert result.exit_code == 2, result.output
            (line,) = result.stderr.strip().splitlines()
            assert line.startswith("error:") and says in line, line
        assert not study_dir.exists()

        # README step 4, as written: the study as a job, then its logs.
        submit = recipe.job("submit", "--submission-id", "recipe", "--no-wait", "--",
                            "tagtune", "study", "--config", str(config), "--storage", str(storage),
                            "--mlflow-uri", recipe.mlflow_uri, "--cpus-per-trial", "1", "--quiet")
        assert submit.returncode == 0, submit.stderr[-3000:]
        deadline = time.monotonic() + 300
        while _ended(journal) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ended(journal) >= 1, recipe.job("logs", "recipe").stdout[-3000:]
        stop = recipe.job("stop", "recipe")
        assert stop.returncode == 0 and "was stopped" in stop.stdout + stop.stderr, stop.stderr[-2000:]
        ended = _ended(journal)
        assert ended < TRIALS, "the stop must land mid-search"
        assert not (study_dir / "summary.json").exists()

        # README step 5: the stopped study finished by a second job.
        done = recipe.job("submit", "--submission-id", "recipe-resume", "--", "tagtune", "study",
                          "resume", str(study_dir), "--quiet", timeout=400)
        logs = done.stdout + done.stderr
        assert done.returncode == 0 and "succeeded" in logs, logs[-3000:]
        assert "View run" not in logs  # MLflow's per-run lines stay out of the job's output

        summary = json.loads((study_dir / "summary.json").read_text())
        cell = summary["cells"]["b1@0.40"]
        assert (cell["trials"], cell["completed"], cell["optuna"]["handed_out"]) == (TRIALS,) * 3
        assert len(summary["replicates"]) == 1 and summary["replicates"][0]["error"] is None
        # In MLflow (logged in through MLflow's own variables): one run per trial and replicate,
        # each finished, every epoch once.
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", recipe.password)
        client = MlflowClient(recipe.mlflow_uri)
        runs = client.search_runs([summary["experiment_id"]], TRIAL_RUNS, max_results=100)
        ids = Counter(r.data.tags[TRIAL_TAG] for r in runs)
        assert set(ids) == study_trial_ids(study_dir) and max(ids.values()) == 1
        assert Counter(r.data.tags["phase"] for r in runs) == {"search": TRIALS, "replicate": 1}
        assert all(r.info.status == "FINISHED" for r in runs)
        for r in runs:
            history = client.get_metric_history(r.info.run_id, "epoch")
            steps = sorted(m.step for m in history)
            assert steps == list(range(1, len(steps) + 1)), r.data.tags[TRIAL_TAG]
            if r.data.tags["phase"] == "search":
                assert len(steps) >= 16, r.data.tags[TRIAL_TAG]
            else:  # the best trial's final state stands in for it (seed 0): one report, epoch 16
                assert [m.value for m in history] == [16], r.data.tags[TRIAL_TAG]
    finally:
        recipe.stop(also=str(tmp_path))
