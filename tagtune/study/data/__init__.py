"""Partially labeled data: the data model, readers, synthetic data, missing-label simulation."""

from tagtune.study.data.core import SPLITS, DataError, Dataset, Split
from tagtune.study.data.generic import load, save
from tagtune.study.data.missing import positives_only, remove_labels

__all__ = [
    "SPLITS",
    "DataError",
    "Dataset",
    "Split",
    "load",
    "positives_only",
    "remove_labels",
    "save",
]
