"""Study settings: where a study and its MLflow store live, whatever the working directory."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tagtune.study.config import ConfigError
from tagtune.study.folder import StudySettings, load_study


def test_relative_paths_become_absolute_in_study_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = StudySettings(data="data/d.h5", storage="studies", mlflow_uri="sqlite:///runs/mlflow.db",
                      search_space="ranges.yaml")
    saved = yaml.safe_load(s.to_yaml())
    assert saved["data"] == str(tmp_path / "data" / "d.h5")
    assert saved["search_space"] == str(tmp_path / "ranges.yaml")
    # A resume or an MLflow sync started from another directory finds the same places.
    assert saved["storage"] == str(tmp_path / "studies")
    assert saved["mlflow_uri"] == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert s.study_dir == tmp_path / "studies" / "study"
    assert StudySettings(data="/d.h5", storage="~/s").storage.startswith("/")


@pytest.mark.parametrize("uri", ["sqlite:////abs/mlflow.db", "http://127.0.0.1:5000",
                                 "https://mlflow.example.org", "postgresql://u@db/mlflow"])
def test_usable_tracking_uris_are_kept(uri):
    assert StudySettings(data="/d.h5", storage="/s", mlflow_uri=uri).mlflow_uri == uri


@pytest.mark.parametrize(("uri", "says"), [
    ("mlruns", "file store"), ("./mlruns", "file store"), ("/abs/mlruns", "file store"),
    ("file:///abs/mlruns", "file store"), ("sqlite:///:memory:", "database file"),
    ("sqlite://", "database file"),
])
def test_tracking_uris_that_would_lose_or_refuse_runs(uri, says):
    with pytest.raises(ConfigError, match="mlflow_uri") as e:
        StudySettings(data="/d.h5", storage="/s", mlflow_uri=uri)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_study_lives_where_it_is_found(tmp_path):
    (tmp_path / "a" / "exp").mkdir(parents=True)
    s = StudySettings(data="/d.h5", name="exp", storage=str(tmp_path / "a"))
    (s.study_dir / "study.yaml").write_text(s.to_yaml())
    moved = tmp_path / "mnt" / "exp"  # e.g. the cluster's share mounted on a laptop
    shutil.copytree(s.study_dir, moved)
    found = load_study(moved)
    assert found.study_dir == moved
    assert found.tracking_uri == f"sqlite:///{moved}/mlflow.db"

    renamed = tmp_path / "other"
    shutil.copytree(s.study_dir, renamed)
    with pytest.raises(ConfigError, match="names the study 'exp'"):
        load_study(renamed)
    with pytest.raises(ConfigError, match="no study.yaml"):
        load_study(tmp_path / "mnt")


@pytest.mark.parametrize(("field", "value", "says"), [
    ("seed", "x", "expected an integer"), ("trials", 2.5, "expected an integer"),
    ("trials", True, "expected an integer"), ("reduction_factor", "fast", "expected a number"),
    ("missing", ["none"], "expected a number"), ("train", 5, "expected a mapping"),
    ("name", 7, "expected a string"), ("data", 5, "expected a string"),
    ("share_le_teacher", "maybe", "must be true or false"), ("num_cpus", "all", "expected an integer"),
])
def test_a_wrong_type_is_refused_with_its_field(field, value, says):
    with pytest.raises(ConfigError, match=f"{field}: {says}"):
        StudySettings(**{"data": "/d.h5", "storage": "/s", field: value})


def test_yaml_friendly_values_are_taken():
    s = StudySettings(data="/d.h5", storage="/s", methods="B1", missing=0, epochs=6.0,
                      reduction_factor=2, num_cpus=None)
    assert (s.methods, s.missing, s.epochs, s.reduction_factor) == (("b1",), (0.0,), 6, 2.0)
    assert isinstance(s.epochs, int) and isinstance(s.reduction_factor, float)


def test_a_paper_preset_gives_every_trial_the_papers_network_and_schedule(tmp_path):
    """--preset openmic-paper in a study: the paper's network and MT schedule in every trial's
    base config, the study's own epochs, and the paper's per-method lr as each cell's first point."""
    from tagtune.search_spaces.spaces import paper_point

    s = StudySettings(data=str(tmp_path / "d.h5"), preset="openmic-paper", epochs=7)
    base = s.base_config()
    assert base["model"]["arch"] == "paper" and base["ema_warmup"] and base["mt_select"] == "student"
    assert base["epochs"] == 7
    assert paper_point("b1", s.preset)["lr"] == 5e-4 and paper_point("mt", s.preset)["lr"] == 1e-3
    with pytest.raises(ConfigError, match="preset"):
        StudySettings(data=str(tmp_path / "d.h5"), preset="paper")
