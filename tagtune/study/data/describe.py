"""A dataset at a glance: per split N/T/F/C, per class the observed fraction and positives."""

from __future__ import annotations

import pandas as pd

from tagtune.study.data.core import Dataset


def class_table(ds: Dataset) -> pd.DataFrame:
    """One row per (split, class): observed fraction, positives and negatives among observed,
    and true positives where ``Y_full`` is known."""
    rows = []
    for name, s in ds.splits.items():
        observed = s.M.mean(axis=0)
        positives = (s.Y * s.M).sum(axis=0)
        negatives = ((1 - s.Y) * s.M).sum(axis=0)
        for c, cls in enumerate(ds.classes):
            row = {
                "split": name,
                "class": cls,
                "observed": float(observed[c]),
                "positives": int(positives[c]),
                "negatives": int(negatives[c]),
            }
            if s.Y_full is not None:
                row["true_positives"] = int(s.Y_full[:, c].sum())
            rows.append(row)
    df = pd.DataFrame(rows)
    if "true_positives" in df:  # a count, absent (<NA>) for splits without Y_full, not a float
        df["true_positives"] = df["true_positives"].astype("Int64")
    return df


def split_table(ds: Dataset) -> pd.DataFrame:
    """One row per split: N, T, F, C, observed fraction, positive fraction among observed."""
    rows = []
    for name, s in ds.splits.items():
        n_obs = int(s.M.sum())
        rows.append({
            "split": name, "N": s.N, "T": s.T, "F": s.F, "C": s.C,
            "observed": n_obs / s.M.size,
            "positive_rate": float(s.Y[s.M].mean()) if n_obs else float("nan"),
            "has_Y_full": s.Y_full is not None,
        })
    return pd.DataFrame(rows)
