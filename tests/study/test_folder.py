"""The study folder's contract: its settings (where a study and its MLflow store live, whatever
the working directory), cell ids, trial directory names, and how launch and analysis read it."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tagtune.study import folder
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
    ("checkpoint_s", -1, "must be >= 0"), ("checkpoint_s", "often", "expected a number"),
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


@pytest.mark.parametrize(("method", "proportion", "cell"), [
    ("mt", 0.4, "mt@0.40"), ("b0", 0.0, "b0@0.00"), ("lemt", 0.125, "lemt@0.12")])
def test_a_cell_id_names_method_and_proportion_to_two_decimals(method, proportion, cell):
    assert folder.cell_id(method, proportion) == cell
    assert folder.parse_cell(cell) == (method, round(proportion, 2))
    s = StudySettings(data="/d.h5", storage="/s", methods=("b1", "mt"), missing=(0.0, 0.4))
    assert s.cells == ["b1@0.00", "b1@0.40", "mt@0.00", "mt@0.40"]  # methods first, as listed


def test_a_trial_directory_name_gives_back_its_trial_id():
    name = folder.trial_dirname("mt@0.40", "3f2a_00007")
    assert name == "mt_0.40_3f2a_00007" and "@" not in name
    assert folder.trial_id_of(name) == "00007"  # Tune's id: the part after the last "_"
    assert folder.trial_id_of(folder.trial_dirname("b1@0.00", "abc")) == "abc"


def test_the_tracking_uri_is_the_given_one_else_the_studys_own_sqlite(tmp_path):
    assert folder.tracking_uri(tmp_path, None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert folder.tracking_uri(tmp_path, "http://h:5000") == "http://h:5000"


def test_the_analysis_reads_a_renamed_study_and_leaves_unknown_keys_out(tmp_path):
    s = StudySettings(data="/d.h5", name="exp", storage=str(tmp_path))
    s.study_dir.mkdir()
    newer = {**yaml.safe_load(s.to_yaml()), "a_newer_setting": 1}
    (s.study_dir / "study.yaml").write_text(yaml.safe_dump(newer))
    with pytest.raises(ConfigError, match="a_newer_setting: unknown key"):
        load_study(s.study_dir)  # launch refuses what it does not know
    renamed = s.study_dir.rename(tmp_path / "copy")
    read = folder.read_study(renamed)
    assert read.name == "exp" and read.study_dir == tmp_path / "exp"  # the name is study.yaml's
    assert read.as_dict() == {**s.as_dict(), "storage": str(tmp_path)}
    with pytest.raises(ConfigError, match="not a study directory"):
        folder.read_study(tmp_path)
