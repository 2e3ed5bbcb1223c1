"""SONYC-UST v2 (Cartwright et al. 2020): the release directory -> :class:`Dataset`.

The release layout this reads::

    <root>/annotations.csv          one row per (clip, annotator): split (train / validate /
                                    test), audio_filename, annotator_id (> 0 crowd, < 0 SONYC
                                    team, 0 verified), <tag>_presence in {1, 0, -1 = not
                                    annotated}; every other column (proximity, sensor_id,
                                    latitude, ...) is ignored
    <root>/dcase-ust-taxonomy.yaml  coarse: {1: engine, ...}
                                    fine: {1: {1: small-sounding-engine, ..., X: engine-of-...}}
    <root>/features/<stem>.npz      OpenL3 per clip (``openl3 audio --output-dir`` output,
      (or openl3/, embeddings/)     what the 2020 baseline loads: audio_filename without its
                                    extension + ``.npz``, key ``embedding`` (T, F), (11, 512)
                                    with its settings); ``features_dir=`` names another
                                    directory (the baseline's script writes embeddings/)

Targets (the paper's protocol, as in the DCASE 2020 baseline's ``classify.py``):
- train: crowd rows only (annotator_id > 0). A tag is present if ANY crowd annotator
  marked it 1, observed if at least one crowd annotator annotated it (not -1). The
  baseline instead sums the values (-1 included) and calls a sum > 0 present, with no
  notion of unobserved; the two agree wherever the used rows hold no -1, and
  ``meta["not_annotated_cells"]`` counts those per split. Train clips without any crowd
  row are dropped (the baseline keeps them with every tag 0); their count is in
  ``meta["dropped_clips"]``.
- validate / test: the verified row (annotator_id == 0) only; clips without one are
  dropped (the baseline cannot score them either). Two verified rows for a clip are an
  error.
- fine level (23 tags): where a group's uncertain "X" tag is positive after aggregation,
  the annotators knew the coarse class but not the fine one, so that group's fine tags are
  unobserved (M False), as the baseline masks their loss; the X tags are not classes. The
  verified positives so hidden are kept, by clip key, in ``meta["dcase_hidden_positives"]``
  for the official metric (:mod:`tagtune.study.eval.dcase`), which scores them.
- coarse level (8 tags): the release's coarse presence columns, same rules, no X masking.
- ``meta["taxonomy"]``: the taxonomy file's content (string keys), so that a converted file
  still knows its classes are SONYC-UST's.

Features are standardised per feature dimension with the mean and standard deviation over
the TRAIN clips and frames only, then applied to every split (no statistic of valid or
test reaches the model). Clip keys are the audio file names without ``.wav``.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tagtune.study.data.core import DataError, Dataset, Split, read_text_as
from tagtune.study.errors import first_line

if TYPE_CHECKING:  # pandas and yaml: imported where SONYC-UST is read, so that tagtune.study runs
    import pandas as pd  # with torch, numpy and h5py alone (bench/bench_gpu.py on a bare GPU node)

ANNOTATIONS = "annotations.csv"
TAXONOMY = "dcase-ust-taxonomy.yaml"
FEATURE_DIRS = ("features", "openl3", "embeddings")
LEVELS = ("fine", "coarse")
SPLIT_NAMES = {"train": "train", "validate": "valid", "test": "test"}
PRESENCE = (1, 0, -1)
HIDDEN_POSITIVES = "dcase_hidden_positives"


# dcase-ust-taxonomy.yaml of SONYC-UST v2 (the same 23 + 8 tags as v1), as meta["taxonomy"].
UST_TAXONOMY = {
    "coarse": {"1": "engine", "2": "machinery-impact", "3": "non-machinery-impact",
               "4": "powered-saw", "5": "alert-signal", "6": "music", "7": "human-voice",
               "8": "dog"},
    "fine": {
        "1": {"1": "small-sounding-engine", "2": "medium-sounding-engine",
              "3": "large-sounding-engine", "X": "engine-of-uncertain-size"},
        "2": {"1": "rock-drill", "2": "jackhammer", "3": "hoe-ram", "4": "pile-driver",
              "X": "other-unknown-impact-machinery"},
        "3": {"1": "non-machinery-impact"},
        "4": {"1": "chainsaw", "2": "small-medium-rotating-saw", "3": "large-rotating-saw",
              "X": "other-unknown-powered-saw"},
        "5": {"1": "car-horn", "2": "car-alarm", "3": "siren", "4": "reverse-beeper",
              "X": "other-unknown-alert-signal"},
        "6": {"1": "stationary-music", "2": "mobile-music", "3": "ice-cream-truck",
              "X": "music-from-uncertain-source"},
        "7": {"1": "person-or-small-group-talking", "2": "person-or-small-group-shouting",
              "3": "large-crowd", "4": "amplified-speech", "X": "other-unknown-human-voice"},
        "8": {"1": "dog-barking-whining"},
    },
}


@dataclass(frozen=True)
class Tag:
    """One taxonomy entry; ``name`` is the class name, ``name + '_presence'`` its CSV column."""

    name: str
    group: str
    uncertain: bool = False

    @property
    def column(self) -> str:
        return f"{self.name}_presence"


def read_sonyc(root: str | Path, level: str = "fine",
               features_dir: str | Path | None = None) -> Dataset:
    """Read a SONYC-UST v2 release directory; any malformed input raises :class:`DataError`."""
    root = Path(root)
    if level not in LEVELS:
        raise DataError(root, "level", f"unknown level {level!r} (expected fine or coarse)")
    if not root.is_dir():
        raise DataError(root, "root", "no such directory")
    coarse, fine = read_taxonomy(root / TAXONOMY)
    tags = fine if level == "fine" else coarse
    table = _read_annotations(root / ANNOTATIONS, [t.column for t in tags])
    feat_dir = _features_dir(root, features_dir)

    parts, dropped, unannotated, x_masked, hidden = {}, {}, {}, 0, {}
    for release_name, name in SPLIT_NAMES.items():
        keys, Y, M, n_dropped, n_minus = _targets(table, release_name, tags, root / ANNOTATIONS)
        if level == "fine":
            Y, M, masked, hidden_here = _mask_uncertain(Y, M, tags, keys)
            x_masked += masked
            if name != "train":  # the verified truth the official metric scores against
                hidden |= hidden_here
        parts[name] = (keys, Y, M)
        dropped[name], unannotated[name] = n_dropped, n_minus

    X = {}
    shape = None
    for name, (keys, _, _) in parts.items():
        X[name] = _load_features(feat_dir, keys, shape)
        shape = X[name].shape[1:]
    _standardise(X, fit_on="train")

    classes = tuple(t.name for t in tags if not t.uncertain)
    splits = {name: Split(X[name], Y, M, keys, where=f"{root}:{name}")
              for name, (keys, Y, M) in parts.items()}
    return Dataset(
        **splits,
        classes=classes,
        name=f"sonyc-{level}",
        source=str(root),
        observation="partial",
        meta={"level": level, "features_dir": str(feat_dir), "dropped_clips": dropped,
              "not_annotated_cells": unannotated, "x_masked_labels": int(x_masked),
              "standardised": "train mean/std per feature",
              "taxonomy": taxonomy_json(coarse, fine), HIDDEN_POSITIVES: hidden},
    )


def read_taxonomy(path: Path) -> tuple[list[Tag], list[Tag]]:
    """Coarse and fine tags in taxonomy order (fine: numbered tags, then the group's X)."""
    import yaml

    return parse_taxonomy(read_text_as(path, yaml.safe_load, "valid YAML", (yaml.YAMLError,)), path)


def parse_taxonomy(doc, path: str | Path) -> tuple[list[Tag], list[Tag]]:
    """:func:`read_taxonomy` of a parsed document (YAML's integer keys or JSON's strings)."""
    if not isinstance(doc, dict):
        raise DataError(path, "file", "expected a mapping with keys coarse and fine")
    for key in ("coarse", "fine"):
        if not isinstance(doc.get(key), dict) or not doc[key]:
            raise DataError(path, key, "missing or not a non-empty mapping")
    coarse_names = {_code(path, "coarse", k): v for k, v in doc["coarse"].items()}
    if set(coarse_names) != {_code(path, "fine", k) for k in doc["fine"]}:
        raise DataError(path, "fine", "groups differ from the coarse groups")
    coarse, fine = [], []
    for key, entries in sorted(doc["fine"].items(), key=lambda kv: int(kv[0])):
        g = str(key)
        coarse.append(Tag(f"{g}_{_label(path, f'coarse.{g}', coarse_names[g])}", g))
        if not isinstance(entries, dict) or not entries:
            raise DataError(path, f"fine.{g}", "expected a non-empty mapping of fine tags")
        codes = {_code(path, f"fine.{g}", k, allow_x=True): v for k, v in entries.items()}
        for c in sorted(codes, key=lambda c: (c == "X", int(c) if c != "X" else 0)):
            label = _label(path, f"fine.{g}.{c}", codes[c])
            fine.append(Tag(f"{g}-{c}_{label}", g, uncertain=c == "X"))
    return coarse, fine


def taxonomy_json(coarse: list[Tag], fine: list[Tag]) -> dict:
    """The taxonomy as ``meta["taxonomy"]`` keeps it: the YAML's layout, string keys."""
    return {"coarse": {t.group: t.name.split("_", 1)[1] for t in coarse},
            "fine": {t.group: {f.name.split("_", 1)[0].split("-", 1)[1]: f.name.split("_", 1)[1]
                               for f in fine if f.group == t.group} for t in coarse}}


def _code(path: Path, field: str, key, allow_x: bool = False) -> str:
    s = str(key)
    if s.isdigit() or (allow_x and s == "X"):
        return s
    raise DataError(path, field, f"bad key {key!r} (expected a number{' or X' if allow_x else ''})")


def _label(path: Path, field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(path, field, f"expected a tag name, got {value!r}")
    return value


def _read_annotations(path: Path, columns: list[str]) -> pd.DataFrame:
    """The rows and columns this reader uses, validated; values as small integers."""
    import pandas as pd

    if not path.is_file():
        raise DataError(path, "file", "no such file")
    try:
        df = pd.read_csv(path, low_memory=False)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as e:
        raise DataError(path, "file", f"not a readable CSV ({first_line(e, 120)})") from e
    for col in ["split", "audio_filename", "annotator_id", *columns]:
        if col not in df.columns:
            raise DataError(path, col, "missing column")
    df = df[["split", "audio_filename", "annotator_id", *columns]].copy()

    bad = ~df["split"].isin(list(SPLIT_NAMES))
    if bad.any():
        raise DataError(path, "split", f"unknown value {df['split'][bad].iloc[0]!r} on line "
                        f"{_line(df, bad)} (expected train, validate or test)")
    names = df["audio_filename"]
    bad = names.isna() | (names.astype(str).str.strip() == "")
    if bad.any():
        raise DataError(path, "audio_filename", f"empty on line {_line(df, bad)}")
    df["audio_filename"] = names.astype(str).str.strip()
    df["annotator_id"] = _integers(df, "annotator_id", path)
    for col in columns:
        df[col] = _integers(df, col, path)
        bad = ~df[col].isin(PRESENCE)
        if bad.any():
            raise DataError(path, col, f"value {df[col][bad].iloc[0]} on line {_line(df, bad)} "
                            "outside {1, 0, -1}")
    splits_per_clip = df.groupby("audio_filename")["split"].nunique()
    if (splits_per_clip > 1).any():
        clip = splits_per_clip.index[splits_per_clip > 1][0]
        raise DataError(path, "split", f"clip {clip!r} appears in more than one split")
    return df


def _integers(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    import pandas as pd

    v = pd.to_numeric(df[col], errors="coerce")
    bad = v.isna() | (v != v.round())
    if bad.any():
        raise DataError(path, col, f"not an integer: {df[col][bad].iloc[0]!r} "
                        f"on line {_line(df, bad)}")
    return v.astype(np.int64)


def _line(df: pd.DataFrame, bad: pd.Series) -> int:
    return int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header


def _targets(df: pd.DataFrame, split: str, tags: list[Tag], path: Path):
    """Keys (sorted), Y and M for one split, and how many of its clips were dropped."""
    import pandas as pd

    rows = df[df["split"] == split]
    if split == "train":
        use = rows[rows["annotator_id"] > 0]
    else:
        use = rows[rows["annotator_id"] == 0]
        twice = use["audio_filename"].duplicated()
        if twice.any():
            clip = use["audio_filename"][twice].iloc[0]
            raise DataError(path, "annotator_id", f"clip {clip!r} has two verified rows")
    if use.empty:
        who = "crowd (annotator_id > 0)" if split == "train" else "verified (annotator_id == 0)"
        raise DataError(path, "split", f"no {who} rows in split {split!r}")
    V = use[[t.column for t in tags]].to_numpy()
    clips = use["audio_filename"].to_numpy()
    # Crowd OR (train); a single verified row (validate/test) passes through unchanged.
    # The baselines sum the values instead (1, 0 and -1) and call a sum > 0 present: the
    # two agree wherever no used row holds a -1, which the count returned here tells.
    Y = pd.DataFrame(V == 1).groupby(clips).any()
    M = pd.DataFrame(V != -1).groupby(clips).any()
    keys = np.array([os.path.splitext(c)[0] for c in Y.index], dtype=str)
    dropped = rows["audio_filename"].nunique() - len(keys)
    return keys, Y.to_numpy(np.float32), M.to_numpy(bool), int(dropped), int((V == -1).sum())


def _mask_uncertain(Y: np.ndarray, M: np.ndarray, tags: list[Tag], keys: np.ndarray):
    """Hide a group's fine tags where its X tag is positive; drop the X columns.

    Also returns, by clip key, the codes (``1-1`` ...) of the positives so hidden: the
    official metric scores a fine tag that is true beside an X tag, so it needs them."""
    M = M.copy()
    masked = 0
    for j, t in enumerate(tags):
        if not t.uncertain:
            continue
        x_pos = (Y[:, j] == 1) & M[:, j]
        group = [i for i, u in enumerate(tags) if u.group == t.group and not u.uncertain]
        masked += int(M[np.ix_(x_pos, group)].sum())
        M[np.ix_(x_pos, group)] = False
    keep = [i for i, t in enumerate(tags) if not t.uncertain]
    hidden_cells = (Y[:, keep] == 1) & ~M[:, keep]
    codes = [tags[i].name.split("_", 1)[0] for i in keep]
    hidden = {str(keys[n]): [codes[c] for c in np.flatnonzero(hidden_cells[n])]
              for n in np.flatnonzero(hidden_cells.any(1))}
    return Y[:, keep], M[:, keep], masked, hidden


def _features_dir(root: Path, features_dir: str | Path | None) -> Path:
    if features_dir is not None:
        d = Path(features_dir)
        if not d.is_dir():
            raise DataError(d, "features_dir", "no such directory")
        return d
    for name in FEATURE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DataError(root / FEATURE_DIRS[0], "features_dir",
                    "no such directory (looked for features/, openl3/ and embeddings/)")


def _load_features(d: Path, keys: np.ndarray, shape: tuple | None) -> np.ndarray:
    """(N, T, F) float32 from one ``<key>.npz`` per clip; every clip the same (T, F)."""
    X = None
    for i, key in enumerate(keys.tolist()):
        emb = _embedding(d / f"{key}.npz")
        if shape is None:
            shape = emb.shape
        if emb.shape != shape:
            raise DataError(d / f"{key}.npz", "embedding",
                            f"shape {emb.shape} differs from {shape} of the other clips")
        if X is None:
            X = np.empty((len(keys), *shape), dtype=np.float32)
        X[i] = emb
    return X


def _embedding(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "file", "no such file (this clip's OpenL3 features)")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(path, "file", "a single .npy array, not an .npz archive")
        with z:
            if "embedding" not in z.files:
                raise DataError(path, "embedding", "missing array")
            emb = z["embedding"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise DataError(path, "embedding", f"not loadable without pickle ({first_line(e, 120)})") from e
    if emb.dtype.kind not in "iuf":
        raise DataError(path, "embedding", f"expected numbers, got dtype {emb.dtype}")
    if emb.ndim != 2 or 0 in emb.shape:
        raise DataError(path, "embedding", f"expected shape (frames, features), got {emb.shape}")
    if not np.isfinite(emb).all():
        raise DataError(path, "embedding", "contains NaN or inf")
    return emb


def _standardise(X: dict[str, np.ndarray], fit_on: str) -> None:
    """In place: subtract the ``fit_on`` split's per-feature mean, divide by its std."""
    fit = X[fit_on].reshape(-1, X[fit_on].shape[-1])
    mean = fit.mean(axis=0, dtype=np.float64)
    sq = np.zeros_like(mean)
    for start in range(0, len(fit), 65536):  # bounded memory on the full release
        sq += ((fit[start:start + 65536] - mean) ** 2).sum(axis=0)
    std = np.sqrt(sq / len(fit))
    std[std == 0] = 1.0  # a constant feature is 0 after centring, not NaN
    for a in X.values():
        a -= mean.astype(np.float32)
        a /= std.astype(np.float32)
