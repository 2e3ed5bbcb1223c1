"""The recipe's tracking server on a real Postgres (a throwaway cluster, tagtune.launch.pg_local):
bad databases refused in one line before anything starts; a study that loses its server
mid-study and gets it back ends with every run and every metric in MLflow exactly once.

CI installs Debian's postgresql (.ci/run) and sets TAGTUNE_REQUIRE_POSTGRES=1: there, missing
binaries fail these tests instead of skipping them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tagtune.launch import mlflow_server
from tagtune.launch.cli import app
from tagtune.launch.pg_local import LocalPostgres, free_port
from tagtune.launch.preflight import psycopg_uri
from tagtune.study.folder import JOURNAL
from tests.launch.processes import MlflowServer, base_env, kill_session
from tests.launch.test_reliability import TRIAL_RUNS, mlflow_equals_results, slow_study, tagtune


@pytest.fixture
def admin(monkeypatch):
    """The MLflow server's admin = this client's login (MLflow's own variables)."""
    password = secrets.token_hex(12)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return password


def _one_line_exit_2(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        mlflow_server.main(argv)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and line.startswith("error: "), line
    return line


def test_server_refuses_a_bad_database_in_one_line_before_starting(tmp_path, postgres, admin, capsys,
                                                                   monkeypatch):
    monkeypatch.delenv("TAGTUNE_DB_PASSWORD", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    store = tmp_path / "mlflow"
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    base = ["--host", "127.0.0.1", "--dir", str(store)]
    line = _one_line_exit_2(capsys, [*base, "--backend-store-uri", postgres.uri,
                                     "--db-password-file", str(wrong)])
    assert f"{postgres.uri}: backend-store-uri:" in line and "password authentication failed" in line
    unreachable = f"postgresql://tagtune@127.0.0.1:{free_port()}/mlflow"  # nothing listens there
    line = _one_line_exit_2(capsys, [*base, "--backend-store-uri", unreachable,
                                     "--db-password-file", str(wrong)])
    assert f"{unreachable}: backend-store-uri:" in line and "Connection refused" in line
    # A password in the URI would be on the server's command line, for `ps` to show.
    line = _one_line_exit_2(capsys, [*base, "--backend-store-uri",
                                     postgres.uri.replace("tagtune@", f"tagtune:{postgres.password}@")])
    assert postgres.password not in line and "--db-password-file" in line
    line = _one_line_exit_2(capsys, [*base, "--db-password-file", str(tmp_path / "missing"),
                                     "--backend-store-uri", postgres.uri])
    assert "db-password-file: cannot read it" in line
    assert not store.exists()  # refused before anything was written


def test_study_refuses_a_postgres_store_with_a_wrong_password(tmp_path, postgres, tiny_dataset,
                                                              monkeypatch):
    from tagtune.study import data

    path = data.save(tiny_dataset, tmp_path / "tiny.h5")
    monkeypatch.setenv("PGPASSWORD", "not-the-password")  # libpq's own, as a user would set it
    result = CliRunner().invoke(app, ["study", "--data", str(path), "--storage", str(tmp_path / "s"),
                                      "--mlflow-uri", postgres.uri, "--methods", "b1", "--quiet"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "mlflow_uri" in line and "password authentication failed" in line
    assert not (tmp_path / "s").exists()  # before any trial, before the study directory


class PostgresServer(MlflowServer):
    """``python -m tagtune.launch.mlflow_server`` on the throwaway Postgres; killed and started
    again at will (the databases stay)."""

    def __init__(self, pg: LocalPostgres, root: Path, password: str):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        secret = root / "db-password"
        secret.write_text(pg.password + "\n")
        secret.chmod(0o600)
        self.argv = [sys.executable, "-m", "tagtune.launch.mlflow_server", "--host", "127.0.0.1",
                     "--port", str(self.port), "--dir", str(root / "mlflow"), "--workers", "2",
                     "--backend-store-uri", pg.uri, "--db-password-file", str(secret)]
        self.env = base_env(HOME=str(root), MLFLOW_TRACKING_USERNAME="admin",
                            MLFLOW_TRACKING_PASSWORD=password)
        self.log, self.cwd = root / "server.log", root
        self.proc: subprocess.Popen | None = None

    def kill(self) -> None:
        self.stop()  # the server and its workers, SIGKILL: no clean shutdown


def _results(journal: Path) -> int:
    return journal.read_text().count('"op": "result"') if journal.exists() else 0


@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_study_on_postgres_loses_its_server_mid_study_and_ends_with_everything_once(
        tmp_path, postgres, admin):
    # ~4 s a trial, one at a time: the study outlasts the server's restart (10-20 s on 2 busy
    # cores) a few times over.
    trials, epochs = 8, 20
    config = slow_study(tmp_path, "pg", n_train=8000, methods=["b1"], missing=[0.4], trials=trials,
                        replicates=1, epochs=epochs, grace_period=epochs, num_cpus=1)
    study_dir = tmp_path / "studies" / "pg"
    server = PostgresServer(postgres, tmp_path, admin)
    driver = None
    try:
        server.start()
        log = tmp_path / "driver.log"
        with open(log, "w") as out:
            driver = subprocess.Popen(
                tagtune("study", "--config", str(config), "--mlflow-uri", server.uri, "--quiet"),
                env=server.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while _results(study_dir / JOURNAL) < 1 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        server.kill()
        ended = (study_dir / JOURNAL).read_text().count('"op": "end"')
        assert driver.poll() is None and ended < trials, "the kill must land mid-study"
        server.start()  # the same databases: what was written before the kill is still there
        assert driver.poll() is None, "the study must outlast the restart"
        rc = driver.wait(timeout=300)
        assert rc == 0, log.read_text()[-3000:]
        summary = json.loads((study_dir / "summary.json").read_text())
        # The final sync reached the restarted server.
        assert summary["mlflow_synced"] is True, log.read_text()[-3000:]

        client = MlflowClient(server.uri)
        # Every trial's run once, every metric of every step (as Tune reported it) ...
        assert mlflow_equals_results(client, summary["experiment_id"], study_dir) == trials + 1
        runs = client.search_runs([summary["experiment_id"]], TRIAL_RUNS, max_results=100)
        assert Counter(r.data.tags["phase"] for r in runs) == {"search": trials, "replicate": 1}
        # ... and no step twice: MLflow's history keeps a second write of one step (another
        # timestamp), which a per-step comparison alone would not see. Counted in Postgres.
        engine = sqlalchemy.create_engine(psycopg_uri(postgres.uri), poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"password": postgres.password})
        with engine.connect() as db:
            twice = db.execute(sqlalchemy.text(
                "SELECT m.run_uuid, m.key, m.step, count(*) FROM metrics m JOIN runs r "
                "ON r.run_uuid = m.run_uuid WHERE r.experiment_id = :e "
                "GROUP BY m.run_uuid, m.key, m.step HAVING count(*) > 1"),
                {"e": int(summary["experiment_id"])}).fetchall()
            held = db.execute(sqlalchemy.text(
                "SELECT count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                "WHERE r.experiment_id = :e AND r.lifecycle_stage = 'active'"),
                {"e": int(summary["experiment_id"])}).scalar()
        engine.dispose()
        assert twice == []
        assert held > trials * epochs * 10  # the rows are really there: >10 metrics an epoch
    finally:
        if driver is not None:
            kill_session(driver)
        server.kill()
