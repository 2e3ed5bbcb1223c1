"""Bad launch input: one line on stderr, exit 2, before any trial starts (nothing in search/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tagtune.study import data
from tests.conftest import invoke
from tests.launch.processes import RayCluster, free_port, mount_namespace_prefix

SMALL = ["--methods", "b1", "--missing", "0", "--trials", "1", "--replicates", "0", "--epochs", "1",
         "--grace-period", "1", "--quiet"]


def refused(args: list[str], field: str) -> str:
    result = invoke("study", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], result.stderr
    return lines[0]


def refused_once_ray_is_up(args: list) -> str:
    """The error line of a study refused where Ray's resources are checked: the last line of its
    stderr (MLflow's store has said its INFO lines by then); exit 2."""
    result = invoke("study", *args)
    assert result.exit_code == 2, result.output
    return result.stderr.strip().splitlines()[-1]


def no_trial_started(storage: Path, name: str = "study") -> bool:
    return not (storage / name / "search").exists()


def test_unreachable_address(tmp_path, data_file):
    port = free_port()  # nothing listens there
    line = refused(["--data", data_file, "--storage", tmp_path, "--address", f"127.0.0.1:{port}",
                    *SMALL], "address")
    assert "no Ray cluster answers" in line and no_trial_started(tmp_path)


def test_unwritable_study_directory(tmp_path, data_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # root writes anywhere, but never below a file
    line = refused(["--data", data_file, "--storage", blocker / "studies", *SMALL], "storage")
    assert "not writable" in line


@pytest.mark.parametrize("uri", ["s3://bucket/studies", "gs://bucket/studies", "file:///tmp/studies"])
def test_object_store_uri_as_storage(tmp_path, data_file, uri, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI taken for a relative path would make a directory here
    line = refused(["--data", data_file, "--storage", uri, *SMALL], "storage")
    assert "mount it" in line
    assert list(tmp_path.iterdir()) == [data_file]


def test_mlflow_that_does_not_answer(tmp_path, data_file):
    uri = f"http://127.0.0.1:{free_port()}"
    line = refused(["--data", data_file, "--storage", tmp_path, "--mlflow-uri", uri, *SMALL],
                   "mlflow_uri")
    assert "no MLflow server answers" in line and no_trial_started(tmp_path)
    assert not (tmp_path / "study").exists()  # refused before the study directory was made


# The file store is refused as the flag's value (named as the flag); ftp:// when MLflow is asked.
@pytest.mark.parametrize(("uri", "says", "named"), [("mlruns", "file store", "command line: --mlflow-uri:"),
                                                     ("ftp://host/x", "not usable", "mlflow_uri")])
def test_tracking_store_that_mlflow_refuses(tmp_path, data_file, uri, says, named):
    line = refused(["--data", data_file, "--storage", tmp_path, "--mlflow-uri", uri, *SMALL], named)
    assert says in line and no_trial_started(tmp_path)


def test_a_refused_launch_leaves_no_study_in_the_way(tmp_path, data_file, ray_session):
    # A typo in --data: refused before anything is written.
    refused(["--data", tmp_path / "typo.h5", "--storage", tmp_path / "st", *SMALL], "path")
    assert not (tmp_path / "st").exists()
    # Refused after study.yaml was written (the tracking store), before any trial: the corrected
    # command is that study, not "a different study already lives here".
    refused(["--data", data_file, "--storage", tmp_path / "st", "--mlflow-uri", "ftp://h/x", *SMALL],
            "mlflow_uri")
    other = tmp_path / "other.h5"
    other.write_bytes(data_file.read_bytes())
    result = invoke("study", "--data", other, "--storage", tmp_path / "st", *SMALL)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "st" / "study" / "study.yaml").read_text())["data"] == str(other)
    # Once a trial has run, another study under that name is refused.
    refused(["--data", data_file, "--storage", tmp_path / "st", *SMALL], "a different study")


def test_a_trial_larger_than_any_node_of_a_local_ray(tmp_path, data_file, ray_session):
    # The session's Ray has 2 CPUs: Tune would wait forever for a 3-CPU slot.
    line = refused_once_ray_is_up(["--data", data_file, "--storage", tmp_path, "--cpus-per-trial", 3,
                                   *SMALL])
    assert line == (
        "error: study: cpus_per_trial: 3 CPUs per trial, but the largest node has 2: "
        "no trial could ever start")
    assert no_trial_started(tmp_path)


def test_methods_the_data_cannot_train(tmp_path, tiny_dataset):
    path = data.save(data.positives_only(tiny_dataset), tmp_path / "positives.h5")
    line = refused(["--data", path, "--storage", tmp_path, "--methods", "b0,b1,le,mt", *SMALL[2:]],
                   "method")
    assert "b1, mt need observed negatives" in line
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize(("search", "field"), [
    ({"lr": [1.0e-2, 1.0e-4]}, "search.lr"),         # low above high
    ({"gamma": [0, 150]}, "search.gamma"),           # beyond its natural range
    ({"momentum": [0.1, 0.9]}, "search.momentum"),   # unknown key
])
def test_bad_search_space(tmp_path, data_file, search, field):
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text(yaml.safe_dump({"search": search}))
    refused(["--data", data_file, "--storage", tmp_path, "--search-space", ranges, *SMALL], field)
    assert not (tmp_path / "study").exists()


def test_unknown_key_in_study_config(tmp_path, data_file):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"data": str(data_file), "epochz": 3}))
    refused(["--config", config, "--storage", tmp_path], "epochz")


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_storage_that_a_node_cannot_see(tmp_path, data_file):
    storage = tmp_path / "studies"
    storage.mkdir()
    hide = mount_namespace_prefix(storage)
    if hide is None:
        pytest.skip("no mount namespaces here (unshare -m / -Urm refused): cannot hide a path")
    cluster = RayCluster()
    try:
        cluster.start_node()
        cluster.start_node(prefix=hide)  # this node sees an empty tmpfs at `storage`
        done = subprocess.run(
            [sys.executable, "-m", "tagtune", "study", "--data", str(data_file), "--storage",
             str(storage), "--address", cluster.address, *SMALL],
            env=cluster.driver_env, capture_output=True, text=True, timeout=180)
    finally:
        cluster.stop()
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "storage: not shared" in lines[-1], done.stderr[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert no_trial_started(storage)


def test_a_second_ctrl_c_still_says_how_to_resume(tmp_path, data_file, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Tune gives the second Ctrl-C back to Python

    monkeypatch.setattr("tagtune.launch.study.run_study", interrupted)
    result = invoke("study", "--data", data_file, "--storage", tmp_path, *SMALL)
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == (f"interrupted: {tmp_path / 'study'}: continue with: "
                                     f"tagtune study resume {tmp_path / 'study'}")


@pytest.mark.parametrize(("address", "env", "token_file", "mode"), [
    ("10.0.0.1:6379", {"RAY_AUTH_TOKEN_PATH": "/some/token"}, False, "token"),
    ("10.0.0.1:6379", {"RAY_AUTH_TOKEN": "abc"}, False, "token"),
    ("10.0.0.1:6379", {}, True, "token"),  # ~/.ray/auth_token, as `ray start` reads it
    ("10.0.0.1:6379", {}, False, None),  # no token: Ray's default stays
    ("10.0.0.1:6379", {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "abc"}, False, "disabled"),
    (None, {"RAY_AUTH_TOKEN": "abc"}, True, None),  # a local instance: not a driver joining
])
def test_token_auth_mode_is_set_before_ray_is_imported(tmp_path, address, env, token_file, mode):
    # A fresh process, as the CLI is: Ray reads RAY_AUTH_MODE once, when imported.
    if token_file:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("abc\n")
    child = ("import os, sys\nfrom tagtune.launch.preflight import token_auth_mode\n"
             "assert 'ray' not in sys.modules\n"
             f"token_auth_mode({address!r})\nprint(os.environ.get('RAY_AUTH_MODE'))")
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    r = subprocess.run([sys.executable, "-c", child], env={**base, **env, "HOME": str(tmp_path)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(mode)
