"""OpenMIC-2018 reader on a tiny release written in the real layout (npz, class map, partitions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.study.data import DataError, load
from tagtune.study.data.openmic import read_openmic

INSTRUMENTS = ["accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute",
               "guitar", "mallet_percussion", "mandolin", "organ", "piano", "saxophone",
               "synthesizer", "trombone", "trumpet", "ukulele", "violin", "voice"]
N, N_TRAIN = 30, 20


def write_release(root: Path, seed: int = 0) -> dict:
    """30 clips, 20 in split01 train and 10 in test; returns the raw arrays written."""
    rng = np.random.default_rng(seed)
    keys = np.array([f"{i * 37 + 46:06d}_{i * 3840}" for i in range(N)])
    X = rng.integers(0, 256, size=(N, 10, 128), dtype=np.uint8)
    Y_mask = rng.random((N, 20)) < 0.3
    conf = rng.choice([0.0, 0.2, 0.45, 0.55, 0.8, 1.0], size=(N, 20))
    Y_true = np.where(Y_mask, conf, 0.5)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "openmic-2018.npz", X=X, Y_true=Y_true, Y_mask=Y_mask, sample_key=keys)
    # Written in reverse order: the class order must come from the indices, not the file order.
    class_map = {name: i for i, name in reversed(list(enumerate(INSTRUMENTS)))}
    (root / "class-map.json").write_text(json.dumps(class_map, indent=4))
    order = rng.permutation(N)
    (root / "partitions").mkdir(exist_ok=True)
    train, test = keys[order[:N_TRAIN]], keys[order[N_TRAIN:]]
    (root / "partitions" / "split01_train.csv").write_text("\n".join(train) + "\n")
    (root / "partitions" / "split01_test.csv").write_text("\n".join(test) + "\n")
    return {"X": X, "Y_true": Y_true, "Y_mask": Y_mask, "keys": keys, "train": train, "test": test}


@pytest.fixture
def release(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "openmic-2018"
    return root, write_release(root)


def test_shapes_scaling_labels_and_classes(release):
    root, raw = release
    ds = read_openmic(root)
    assert ds.classes == tuple(INSTRUMENTS)
    assert (ds.name, ds.observation, ds.source) == ("openmic", "partial", str(root))
    assert ds.meta == {"split": 1, "valid_fraction": 0.15, "seed": 0, "observed_ties": 0,
                       "unpartitioned_keys": 0}
    assert (ds.train.N, ds.valid.N, ds.test.N) == (17, 3, 10)  # 15% of 20 train keys
    row = {k: i for i, k in enumerate(raw["keys"])}
    for s in ds.splits.values():
        assert s.X.shape[1:] == (10, 128) and s.X.dtype == np.float32 and s.Y_full is None
        idx = [row[k] for k in s.keys]
        np.testing.assert_allclose(s.X, raw["X"][idx] / 255.0, rtol=1e-6)
        assert 0.0 <= s.X.min() and s.X.max() <= 1.0
        np.testing.assert_array_equal(s.M, raw["Y_mask"][idx])
        expected = (raw["Y_true"][idx] > 0.5) & raw["Y_mask"][idx]
        np.testing.assert_array_equal(s.Y, expected.astype(np.float32))
    # The tiny release does hold observed negatives, observed positives and unobserved entries.
    assert ds.train.Y.sum() > 0 and (ds.train.M & (ds.train.Y == 0)).sum() > 0
    assert (~ds.train.M).sum() > 0


def test_split_membership_follows_the_partition_files(release):
    root, raw = release
    ds = read_openmic(root)
    assert ds.test.keys.tolist() == raw["test"].tolist()  # file order kept
    train, valid = set(ds.train.keys), set(ds.valid.keys)
    assert not train & valid
    assert train | valid == set(raw["train"])
    in_file = [k for k in raw["train"] if k in train]
    assert ds.train.keys.tolist() == in_file


def test_validation_draw_is_seeded(release):
    root, _ = release
    a, b, c = read_openmic(root, seed=0), read_openmic(root, seed=0), read_openmic(root, seed=1)
    assert a.valid.keys.tolist() == b.valid.keys.tolist()
    assert a.fingerprint == b.fingerprint
    assert set(a.valid.keys) != set(c.valid.keys)
    assert c.meta["seed"] == 1
    d = read_openmic(root, valid_fraction=0.5)
    assert (d.train.N, d.valid.N) == (10, 10)


def test_txt_partitions_and_other_split_number(tmp_path):
    root = tmp_path / "r"
    raw = write_release(root)
    part = root / "partitions"
    (part / "split01_train.csv").rename(part / "train02.txt")
    (part / "split01_test.csv").rename(part / "test02.txt")
    ds = read_openmic(root, split=2)
    assert ds.meta["split"] == 2
    assert ds.test.keys.tolist() == raw["test"].tolist()
    with pytest.raises(DataError, match="split01_train.csv"):
        read_openmic(root, split=1)


def test_observed_tie_counts_as_present_and_is_recorded(tmp_path):
    root = tmp_path / "r"
    raw = write_release(root)
    Y_true, Y_mask = raw["Y_true"].copy(), raw["Y_mask"].copy()
    Y_mask[0, 3], Y_true[0, 3] = True, 0.5
    np.savez(root / "openmic-2018.npz", X=raw["X"], Y_true=Y_true, Y_mask=Y_mask,
             sample_key=raw["keys"])
    ds = read_openmic(root)
    assert ds.meta["observed_ties"] == 1
    key = raw["keys"][0]
    s = next(s for s in ds.splits.values() if key in set(s.keys))
    i = s.keys.tolist().index(key)
    assert s.M[i, 3] and s.Y[i, 3] == 1.0


def _resave(root: Path, raw: dict, **changes) -> None:
    arrays = {"X": raw["X"], "Y_true": raw["Y_true"], "Y_mask": raw["Y_mask"],
              "sample_key": raw["keys"]} | changes
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(root / "openmic-2018.npz", **arrays)


def _write_part(root: Path, name: str, keys) -> None:
    (root / "partitions" / name).write_text("\n".join(keys) + "\n")


BAD = {
    "missing npz": (lambda r, raw: (r / "openmic-2018.npz").unlink(), "openmic-2018.npz", "file"),
    "corrupt npz": (lambda r, raw: (r / "openmic-2018.npz").write_bytes(b"PK\x03\x04junk"),
                    "openmic-2018.npz", "file"),
    "missing key": (lambda r, raw: _resave(r, raw, Y_mask=None), "openmic-2018.npz", "Y_mask"),
    "X wrong rank": (lambda r, raw: _resave(r, raw, X=raw["X"].reshape(N, -1)),
                     "openmic-2018.npz", "X"),
    "X not uint8": (lambda r, raw: _resave(r, raw, X=raw["X"].astype(np.float32)),
                    "openmic-2018.npz", "X"),
    "Y_true NaN": (lambda r, raw: _resave(r, raw, Y_true=np.where(raw["Y_mask"], np.nan, 0.5)),
                   "openmic-2018.npz", "Y_true"),
    "Y_mask shape": (lambda r, raw: _resave(r, raw, Y_mask=raw["Y_mask"][:, :19]),
                     "openmic-2018.npz", "Y_mask"),
    "object keys": (lambda r, raw: _resave(r, raw, sample_key=raw["keys"].astype(object)),
                    "openmic-2018.npz", "sample_key"),
    "duplicate npz key": (lambda r, raw: _resave(r, raw, sample_key=np.r_[raw["keys"][:-1],
                                                                          raw["keys"][:1]]),
                          "openmic-2018.npz", "sample_key"),
    "class-map size": (lambda r, raw: (r / "class-map.json").write_text(
        json.dumps({n: i for i, n in enumerate(INSTRUMENTS[:19])})), "class-map.json",
        "class-map"),
    "class-map not JSON": (lambda r, raw: (r / "class-map.json").write_text("{accordion: 0"),
                           "class-map.json", "file"),
    "key absent from npz": (lambda r, raw: _write_part(r, "split01_train.csv",
                                                       [*raw["train"], "999999_0"]),
                            "split01_train.csv", "sample_key"),
    "empty partition": (lambda r, raw: _write_part(r, "split01_test.csv", []),
                        "split01_test.csv", "sample_key"),
    "duplicate partition key": (lambda r, raw: _write_part(r, "split01_train.csv",
                                                           [*raw["train"], raw["train"][0]]),
                                "split01_train.csv", "sample_key"),
    "train/test overlap": (lambda r, raw: _write_part(r, "split01_test.csv",
                                                      [*raw["test"], raw["train"][0]]),
                           "split01_test.csv", "sample_key"),
    "missing test partition": (lambda r, raw: (r / "partitions" / "split01_test.csv").unlink(),
                               "split01_test.csv", "file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_a_one_line_data_error(tmp_path, case):
    root = tmp_path / "r"
    raw = write_release(root)
    mutate, filename, field = BAD[case]
    mutate(root, raw)
    with pytest.raises(DataError) as info:
        read_openmic(root)
    msg = str(info.value)
    assert "\n" not in msg
    assert filename in msg and f": {field}: " in msg
    assert info.value.field == field


def test_bad_arguments(release):
    root, _ = release
    with pytest.raises(DataError, match="valid_fraction"):
        read_openmic(root, valid_fraction=1.0)
    with pytest.raises(DataError, match="no such directory"):
        read_openmic(root / "nope")


def test_cli_convert_writes_a_file_that_loads_back_equal(release, tmp_path):
    root, _ = release
    out = tmp_path / "openmic.h5"
    result = CliRunner().invoke(app, ["data", "convert", "openmic", str(root), str(out),
                                      "--seed", "3"])
    assert result.exit_code == 0, result.output
    back, direct = load(out), read_openmic(root, seed=3)
    assert back.fingerprint == direct.fingerprint
    assert back.classes == direct.classes and back.meta == direct.meta
    for name, s in direct.splits.items():
        b = back.split(name)
        np.testing.assert_array_equal(b.X, s.X)
        np.testing.assert_array_equal(b.Y, s.Y)
        np.testing.assert_array_equal(b.M, s.M)
        assert b.keys.tolist() == s.keys.tolist()


def test_cli_convert_broken_release_exits_2_with_one_line(release, tmp_path):
    root, _ = release
    (root / "class-map.json").unlink()
    result = CliRunner().invoke(app, ["data", "convert", "openmic", str(root),
                                      str(tmp_path / "o.h5")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "class-map.json" in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "o.h5").exists()
