"""SONYC-UST v2 reader on a tiny release written in the real layout (CSV, taxonomy, OpenL3 npz)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.study.data import DataError, load, save
from tagtune.study.data.sonyc import read_sonyc, read_taxonomy
from tests.conftest import assert_one_line_data_error

COARSE = ["engine", "machinery-impact", "non-machinery-impact", "powered-saw", "alert-signal",
          "music", "human-voice", "dog"]
FINE = [  # the release's v2 taxonomy; the last name of a list is its group's uncertain X tag
    ["small-sounding-engine", "medium-sounding-engine", "large-sounding-engine",
     "engine-of-uncertain-size"],
    ["rock-drill", "jackhammer", "hoe-ram", "pile-driver", "other-unknown-impact-machinery"],
    ["non-machinery-impact"],
    ["chainsaw", "small-medium-rotating-saw", "large-rotating-saw", "other-unknown-powered-saw"],
    ["car-horn", "car-alarm", "siren", "reverse-beeper", "other-unknown-alert-signal"],
    ["stationary-music", "mobile-music", "ice-cream-truck", "music-from-uncertain-source"],
    ["person-or-small-group-talking", "person-or-small-group-shouting", "large-crowd",
     "amplified-speech", "other-unknown-human-voice"],
    ["dog-barking-whining"],
]
# dcase-ust-taxonomy.yaml as released: integer keys, "X" for the uncertain tag.
TAXONOMY = yaml.safe_dump({
    "coarse": {g: name for g, name in enumerate(COARSE, 1)},
    "fine": {g: {(c if c < len(names) or len(names) == 1 else "X"): n
                 for c, n in enumerate(names, 1)} for g, names in enumerate(FINE, 1)},
}, sort_keys=False)
T, F = 11, 512
SHIFT = {"train": 5.0, "validate": 7.0, "test": 3.0}
CLIPS = {  # 12 clips: 5 train, 4 validate (one never verified), 3 test
    "train": ["00_000001", "00_000002", "00_000003", "00_000004", "00_000005"],
    "validate": ["05_000101", "05_000102", "05_000103", "05_000104"],
    "test": ["09_000201", "09_000202", "09_000203"],
}
# (split, clip, annotator_id, positive fine codes, not-annotated fine codes); absent = 0.
ROWS = [
    ("train", "00_000001", 11, {"1-1"}, set()),
    ("train", "00_000001", 12, set(), set()),
    ("train", "00_000001", 13, set(), {"5-3", "8-1"}),   # 5-3 still observed via 11, 12
    ("train", "00_000002", 11, {"1-X", "7-1"}, set()),   # X-positive: group 1's fine hidden
    ("train", "00_000002", 12, {"1-2"}, set()),
    ("train", "00_000002", 14, set(), set()),
    ("train", "00_000003", 12, set(), {"6-1"}),
    ("train", "00_000003", 15, set(), {"6-1"}),          # 6-1: no crowd annotation at all
    ("train", "00_000003", 0, {"5-3"}, set()),           # verified row ignored on train
    ("train", "00_000003", -3, {"8-1"}, set()),          # SONYC team row ignored on train
    ("train", "00_000004", 16, {"2-2", "8-1"}, set()),
    ("train", "00_000004", 17, {"2-2"}, set()),
    ("train", "00_000005", 18, {"4-1"}, set()),
    ("validate", "05_000101", 21, {"1-1"}, set()),       # crowd says engine, verified says no
    ("validate", "05_000101", 0, {"5-3"}, set()),
    ("validate", "05_000102", 22, set(), set()),
    ("validate", "05_000102", 0, {"7-X", "7-1"}, set()),  # verified X: group 7 fine hidden
    ("validate", "05_000103", 0, {"6-2"}, {"3-1"}),
    ("validate", "05_000104", 23, {"8-1"}, set()),       # never verified -> dropped
    ("test", "09_000201", 0, {"2-1"}, set()),
    ("test", "09_000201", 31, {"2-3"}, set()),
    ("test", "09_000202", 0, set(), set()),
    ("test", "09_000203", 0, {"1-3", "8-1"}, set()),
]
OTHER = {"sensor_id": 7, "borough": 1, "block": 547, "latitude": 40.7, "longitude": -73.99,
         "year": 2019, "week": 12, "day": 3, "hour": 14}


def _tags():
    doc = yaml.safe_load(TAXONOMY)
    fine = [(str(g), str(c), n) for g, e in doc["fine"].items() for c, n in e.items()]
    return doc["coarse"], fine


def annotation_table(rows=ROWS) -> pd.DataFrame:
    coarse, fine = _tags()
    records = []
    for split, clip, annotator, pos, unannotated in rows:
        rec = {"split": split, "sensor_id": OTHER["sensor_id"], "audio_filename": f"{clip}.wav",
               "annotator_id": annotator} | {k: v for k, v in OTHER.items() if k != "sensor_id"}
        for g, c, name in fine:
            code = f"{g}-{c}"
            rec[f"{code}_{name}_presence"] = -1 if code in unannotated else int(code in pos)
            rec[f"{code}_{name}_proximity"] = "near" if code in pos else -1
        for g, name in coarse.items():
            codes = [f"{gg}-{c}" for gg, c, _ in fine if gg == str(g)]
            value = 1 if any(c in pos for c in codes) else 0
            rec[f"{g}_{name}_presence"] = -1 if all(c in unannotated for c in codes) else value
        records.append(rec)
    return pd.DataFrame(records)


def write_release(root: Path, features: str = "features") -> dict[str, np.ndarray]:
    """The tiny release; returns the raw embeddings by clip."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dcase-ust-taxonomy.yaml").write_text(TAXONOMY)
    annotation_table().to_csv(root / "annotations.csv", index=False)
    rng = np.random.default_rng(0)
    (root / features).mkdir()
    raw = {}
    for split, clips in CLIPS.items():
        for clip in clips:
            emb = (SHIFT[split] + 3.0 * rng.normal(size=(T, F))).astype(np.float32)
            np.savez(root / features / f"{clip}.npz", embedding=emb,
                     timestamps=np.arange(T, dtype=np.float64))
            raw[clip] = emb
    return raw


@pytest.fixture
def release(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "sonyc-ust"
    return root, write_release(root)


def label(ds, split: str, clip: str, cls: str) -> tuple[float, bool]:
    s = ds.split(split)
    i, j = s.keys.tolist().index(clip), ds.classes.index(cls)
    return float(s.Y[i, j]), bool(s.M[i, j])


def test_taxonomy_gives_23_fine_and_8_coarse_classes(release):
    root, _ = release
    fine, coarse = read_sonyc(root), read_sonyc(root, level="coarse")
    assert len(fine.classes) == 23 and len(coarse.classes) == 8
    assert fine.classes[0] == "1-1_small-sounding-engine"
    assert fine.classes[-1] == "8-1_dog-barking-whining"
    assert not any("-X_" in c for c in fine.classes)
    assert coarse.classes[:2] == ("1_engine", "2_machinery-impact")
    assert (fine.name, coarse.name) == ("sonyc-fine", "sonyc-coarse")
    assert fine.observation == "partial" and fine.train.Y_full is None


def test_read_taxonomy_orders_numbered_tags_then_x(release):
    root, _ = release
    coarse, fine = read_taxonomy(root / "dcase-ust-taxonomy.yaml")
    assert [t.name for t in coarse][-1] == "8_dog" and len(fine) == 29
    assert [t.name for t in fine if t.uncertain] == [
        "1-X_engine-of-uncertain-size", "2-X_other-unknown-impact-machinery",
        "4-X_other-unknown-powered-saw", "5-X_other-unknown-alert-signal",
        "6-X_music-from-uncertain-source", "7-X_other-unknown-human-voice"]
    group1 = [t.name for t in fine if t.group == "1"]
    assert group1[-1] == "1-X_engine-of-uncertain-size" and group1[0].startswith("1-1_")
    assert fine[0].column == "1-1_small-sounding-engine_presence"


def test_splits_keys_and_dropped_clips(release):
    root, _ = release
    ds = read_sonyc(root)
    assert ds.train.keys.tolist() == CLIPS["train"]
    assert ds.valid.keys.tolist() == CLIPS["validate"][:3]   # 05_000104 has no verified row
    assert ds.test.keys.tolist() == CLIPS["test"]
    assert ds.meta["dropped_clips"] == {"train": 0, "valid": 1, "test": 0}
    assert ds.train.X.shape == (5, T, F) and ds.valid.X.dtype == np.float32


def test_train_targets_are_the_crowd_or(release):
    root, _ = release
    ds = read_sonyc(root)
    assert label(ds, "train", "00_000001", "1-1_small-sounding-engine") == (1.0, True)
    assert label(ds, "train", "00_000001", "5-3_siren") == (0.0, True)  # two of three said 0
    assert label(ds, "train", "00_000003", "6-1_stationary-music") == (0.0, False)
    # Verified (0) and SONYC-team (< 0) rows of a train clip are not used.
    assert label(ds, "train", "00_000003", "5-3_siren") == (0.0, True)
    assert label(ds, "train", "00_000003", "8-1_dog-barking-whining") == (0.0, True)
    assert label(ds, "train", "00_000004", "8-1_dog-barking-whining") == (1.0, True)
    assert ds.train.Y.sum() == 5  # 1-1, 7-1, 2-2, 8-1, 4-1; 1-2 is hidden by 1-X
    assert ds.train.M.sum() == 5 * 23 - 1 - 3  # 6-1 unannotated; group 1 hidden on 00_000002


def test_uncertain_x_tag_hides_its_group_at_fine_level_only(release):
    root, _ = release
    fine, coarse = read_sonyc(root), read_sonyc(root, level="coarse")
    for cls in ("1-1_small-sounding-engine", "1-2_medium-sounding-engine",
                "1-3_large-sounding-engine"):
        assert label(fine, "train", "00_000002", cls) == (0.0, False)
    assert label(fine, "train", "00_000002", "7-1_person-or-small-group-talking") == (1.0, True)
    assert label(coarse, "train", "00_000002", "1_engine") == (1.0, True)
    for cls in ("7-1_person-or-small-group-talking", "7-4_amplified-speech"):
        assert label(fine, "valid", "05_000102", cls) == (0.0, False)
    assert label(coarse, "valid", "05_000102", "7_human-voice") == (1.0, True)
    assert fine.meta["x_masked_labels"] == 3 + 4


def test_validate_and_test_use_the_verified_row_only(release):
    root, _ = release
    ds = read_sonyc(root)
    assert label(ds, "valid", "05_000101", "1-1_small-sounding-engine") == (0.0, True)
    assert label(ds, "valid", "05_000101", "5-3_siren") == (1.0, True)
    assert label(ds, "valid", "05_000103", "3-1_non-machinery-impact") == (0.0, False)
    assert label(ds, "test", "09_000201", "2-3_hoe-ram") == (0.0, True)
    assert label(ds, "test", "09_000201", "2-1_rock-drill") == (1.0, True)
    assert ds.test.Y.sum() == 3 and ds.test.M.all()
    coarse = read_sonyc(root, level="coarse")
    assert coarse.test.Y.sum() == 3  # 2_machinery-impact, 1_engine, 8_dog


def test_standardisation_uses_train_statistics_only(release):
    root, raw = release
    ds = read_sonyc(root)
    train_raw = np.stack([raw[c] for c in CLIPS["train"]]).astype(np.float64)
    mean, std = train_raw.mean(axis=(0, 1)), train_raw.std(axis=(0, 1))
    np.testing.assert_allclose(ds.train.X.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.X.std(axis=(0, 1)), 1.0, atol=1e-4)
    valid_raw = np.stack([raw[c] for c in CLIPS["validate"][:3]])
    np.testing.assert_allclose(ds.valid.X, (valid_raw - mean) / std, rtol=1e-4, atol=1e-4)
    # Valid was shifted by +2 before standardising: its mean is NOT forced to zero.
    assert abs(ds.valid.X.mean() - 2.0 / 3.0) < 0.1


def test_feature_directory_choices(tmp_path):
    root = tmp_path / "a"
    write_release(root, features="openl3")
    assert read_sonyc(root).meta["features_dir"] == str(root / "openl3")
    other = tmp_path / "b"
    write_release(other, features="emb")
    ds = read_sonyc(other, features_dir=other / "emb")
    assert ds.train.N == 5


def _edit_csv(root: Path, fn) -> None:
    df = pd.read_csv(root / "annotations.csv")
    fn(df)
    df.to_csv(root / "annotations.csv", index=False)


def _set(df, col, value, row=0):
    df[col] = df[col].astype(object)
    df.loc[row, col] = value


def _emb(root: Path, clip: str, **arrays) -> None:
    np.savez(root / "features" / f"{clip}.npz", **arrays)


BAD = {
    "missing annotations": (lambda r: (r / "annotations.csv").unlink(), "annotations.csv", "file"),
    "unparseable csv": (lambda r: (r / "annotations.csv").write_text('split,a\n"train,1\n'),
                        "annotations.csv", "file"),
    "missing presence column": (
        lambda r: _edit_csv(r, lambda d: d.pop("5-3_siren_presence")),
        "annotations.csv", "5-3_siren_presence"),
    "missing annotator column": (
        lambda r: _edit_csv(r, lambda d: d.pop("annotator_id")),
        "annotations.csv", "annotator_id"),
    "presence value 2": (lambda r: _edit_csv(r, lambda d: _set(d, "2-2_jackhammer_presence", 2)),
                         "annotations.csv", "2-2_jackhammer_presence"),
    "presence not a number": (
        lambda r: _edit_csv(r, lambda d: _set(d, "8-1_dog-barking-whining_presence", "yes", 4)),
        "annotations.csv", "8-1_dog-barking-whining_presence"),
    "unknown split": (lambda r: _edit_csv(r, lambda d: _set(d, "split", "dev")),
                      "annotations.csv", "split"),
    "two verified rows": (lambda r: _edit_csv(r, lambda d: _set(d, "annotator_id", 0, 20)),
                          "annotations.csv", "annotator_id"),
    "clip in two splits": (lambda r: _edit_csv(r, lambda d: _set(d, "split", "test", 1)),
                           "annotations.csv", "split"),
    "bad yaml": (lambda r: (r / "dcase-ust-taxonomy.yaml").write_text("coarse: [1, {\n"),
                 "dcase-ust-taxonomy.yaml", "file"),
    "taxonomy without fine": (
        lambda r: (r / "dcase-ust-taxonomy.yaml").write_text(TAXONOMY.split("fine:")[0]),
        "dcase-ust-taxonomy.yaml", "fine"),
    "missing feature file": (lambda r: (r / "features" / "09_000202.npz").unlink(),
                             "09_000202.npz", "file"),
    "wrong embedding shape": (lambda r: _emb(r, "05_000102", embedding=np.zeros((11, 256))),
                              "05_000102.npz", "embedding"),
    "embedding rank 1": (lambda r: _emb(r, "00_000001", embedding=np.zeros(512)),
                         "00_000001.npz", "embedding"),
    "embedding NaN": (lambda r: _emb(r, "00_000003", embedding=np.full((11, 512), np.nan)),
                      "00_000003.npz", "embedding"),
    "embedding key missing": (lambda r: _emb(r, "00_000003", features=np.zeros((11, 512))),
                              "00_000003.npz", "embedding"),
    "embedding object array": (
        lambda r: _emb(r, "00_000003", embedding=np.array([None, 1], dtype=object)),
        "00_000003.npz", "embedding"),
    "no features directory": (lambda r: (r / "features").rename(r / "feats"),
                              "features", "features_dir"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_a_one_line_data_error(tmp_path, case):
    root = tmp_path / "r"
    write_release(root)
    mutate, filename, field = BAD[case]
    mutate(root)
    assert_one_line_data_error(lambda: read_sonyc(root), filename, field)


def test_unknown_level_is_a_data_error(release):
    root, _ = release
    with pytest.raises(DataError, match=r"sonyc-ust: level: unknown level 'medium'"):
        read_sonyc(root, level="medium")


@pytest.mark.parametrize("level", ["fine", "coarse"])
def test_cli_convert_writes_a_file_that_loads_back_equal(release, tmp_path, level):
    root, _ = release
    out = tmp_path / f"sonyc-{level}.h5"
    result = CliRunner().invoke(app, ["data", "convert", "sonyc", str(root), str(out),
                                      "--level", level])
    assert result.exit_code == 0, result.output
    back, direct = load(out), read_sonyc(root, level=level)
    assert back.fingerprint == direct.fingerprint
    assert (back.name, back.classes, back.meta) == (direct.name, direct.classes, direct.meta)
    for name, s in direct.splits.items():
        np.testing.assert_array_equal(back.split(name).X, s.X)
        np.testing.assert_array_equal(back.split(name).M, s.M)


def test_cli_convert_reads_embeddings_from_features_dir(release, tmp_path):
    root, _ = release
    elsewhere = tmp_path / "my-embeddings"
    (root / "features").rename(elsewhere)
    out = tmp_path / "sonyc.h5"
    args = ["data", "convert", "sonyc", str(root), str(out)]
    missing = CliRunner().invoke(app, args)  # nothing in the release's own folders now
    assert missing.exit_code == 2 and "features_dir" in missing.stderr
    result = CliRunner().invoke(app, [*args, "--features-dir", str(elsewhere)])
    assert result.exit_code == 0, result.output
    assert load(out).meta["features_dir"] == str(elsewhere)


def test_cli_convert_broken_release_exits_2_with_one_line(release, tmp_path):
    root, _ = release
    (root / "features" / "00_000005.npz").unlink()
    result = CliRunner().invoke(app, ["data", "convert", "sonyc", str(root),
                                      str(tmp_path / "o.h5")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "00_000005.npz" in lines[0]


def test_meta_keeps_the_taxonomy_and_the_verified_positives_an_x_tag_hides(release):
    """05_000102's verified row has 7-X and 7-1: 7-1 is hidden in M but kept for the DCASE
    metric; the train clip 00_000002 (crowd 1-X beside 1-2) is not scored, so not kept."""
    from tagtune.study.eval.dcase import taxonomy_of

    root, _ = release
    fine, coarse = read_sonyc(root), read_sonyc(root, level="coarse")
    doc = yaml.safe_load(TAXONOMY)
    assert fine.meta["taxonomy"] == json.loads(json.dumps(doc))
    assert fine.meta["dcase_hidden_positives"] == {"05_000102": ["7-1"]}
    assert coarse.meta["dcase_hidden_positives"] == {}
    assert (taxonomy_of(fine).level, taxonomy_of(coarse).level) == ("fine", "coarse")
    assert label(fine, "valid", "05_000102", "7-1_person-or-small-group-talking") == (0.0, False)


def test_not_annotated_cells_count_the_minus_ones_of_the_rows_used(release):
    """Where this is 0 the crowd OR and the baselines' "sum > 0" give the same targets.
    Fine: train crowd rows hold 5-3, 8-1, 6-1, 6-1; the verified 05_000103 row holds 3-1.
    Coarse: a coarse column is -1 only where its whole group is (8 on row 13, 3 on 05_000103)."""
    root, _ = release
    assert read_sonyc(root).meta["not_annotated_cells"] == {"train": 4, "valid": 1, "test": 0}
    coarse = read_sonyc(root, level="coarse").meta["not_annotated_cells"]
    assert coarse == {"train": 1, "valid": 1, "test": 0}


def test_the_baselines_embeddings_directory_is_found(tmp_path):
    root = tmp_path / "r"
    write_release(root, features="embeddings")
    assert read_sonyc(root).meta["features_dir"] == str(root / "embeddings")


def test_dcase_metrics_of_a_converted_release_score_the_hidden_positive(release, tmp_path):
    """Round trip through the generic file, then the official fine metrics on validate, whose
    05_000102 has 7-X and a hidden 7-1: predicting 7-1 there is a TP, not nothing."""
    from tagtune.study.eval.dcase import dcase_metrics, taxonomy_of

    root, _ = release
    ds = load(save(read_sonyc(root), tmp_path / "s.h5"))
    tax = taxonomy_of(ds)
    valid = ds.valid
    scores = np.where(valid.Y == 1, 0.9, 0.1)
    i, j = valid.keys.tolist().index("05_000102"), ds.classes.index("7-1_person-or-small-group-talking")
    scores[i, j] = 0.9
    assert dcase_metrics(valid, scores, tax)["dcase_fine_micro_f1"] == 1.0
    scores[i, j] = 0.1  # the hidden 7-1 missed: one FN (group 7 predicted nothing)
    assert dcase_metrics(valid, scores, tax)["dcase_fine_micro_f1"] < 1.0
