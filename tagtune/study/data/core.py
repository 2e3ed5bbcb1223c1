"""The data model: one partially labeled split, and a dataset of three splits.

Every reader returns a :class:`Dataset`; everything downstream (methods, study,
analysis) reads data only through it. Construction validates, so code that
holds a ``Split`` can trust its shapes, dtypes and values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tagtune.study.errors import first_line

Observation = Literal["partial", "complete", "positives-only"]
OBSERVATIONS: tuple[str, ...] = ("partial", "complete", "positives-only")
SPLITS: tuple[str, ...] = ("train", "valid", "test")


class DataError(ValueError):
    """Malformed input. The message is one line: ``<file>: <field>: <problem>``."""

    def __init__(self, where: str, field: str, problem: str):
        self.where, self.field, self.problem = str(where), field, problem
        # One line whatever the parts hold (a file name or a library message with newlines).
        super().__init__(" ".join(f"{where}: {field}: {problem}".splitlines()))


def read_text_as(path: Path, parse: Callable[[str], Any], what: str,
                 errors: tuple[type[BaseException], ...] = ()) -> Any:
    """``parse`` of the UTF-8 text of a release's file; where the file is missing, unreadable
    or (``errors``) not parsable, a DataError saying it is not ``what``."""
    if not path.is_file():
        raise DataError(path, "file", "no such file")
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *errors) as e:
        raise DataError(path, "file", f"not {what} ({first_line(e, 120)})") from e


def _as_bool_mask(M: np.ndarray, where: str, field: str) -> np.ndarray:
    """Accept bool, or an integer/float array holding only 0 and 1; reject anything else."""
    M = np.asarray(M)
    if M.dtype == bool:
        return M
    if M.dtype.kind in "iuf":
        if M.size and not np.isin(M, (0, 1)).all():
            raise DataError(where, field, "mask is not boolean (values other than 0 and 1)")
        return M.astype(bool)
    raise DataError(where, field, f"mask is not boolean (dtype {M.dtype})")


def _numeric(a: np.ndarray, where: str, field: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise DataError(where, field, f"expected a numeric array, got dtype {a.dtype}")
    return a


@dataclass(frozen=True, eq=False)
class Split:
    """One partially labeled split.

    ``Y`` is 0 wherever ``M`` is False: a missing label's value is not stored at
    all, so training code cannot read it (the paper's LE leaked dropped labels).
    """

    X: np.ndarray
    """float32 (N, T, F) frame embeddings; a (N, F) input becomes T = 1."""
    Y: np.ndarray
    """float32 (N, C): 1 = present, 0 = absent where observed, 0 where missing."""
    M: np.ndarray
    """bool (N, C): True where the label is observed."""
    keys: np.ndarray
    """str (N,): clip keys, unique."""
    Y_full: np.ndarray | None = None
    """float32 (N, C) complete ground truth where known (synthetic data); evaluation only."""
    where: str = field(default="<memory>", compare=False)
    """Where the split came from, for error messages (``file:split``)."""

    def __post_init__(self) -> None:
        w = self.where
        X = _numeric(self.X, w, "X")
        if X.ndim == 2:
            X = X[:, None, :]
        if X.ndim != 3:
            raise DataError(w, "X", f"expected rank 2 or 3 (N, T, F), got shape {X.shape}")
        N = X.shape[0]
        if N == 0:
            raise DataError(w, "X", "empty split (N = 0)")
        if 0 in X.shape[1:]:
            raise DataError(w, "X", f"zero-sized frame or feature axis, shape {X.shape}")
        with np.errstate(over="ignore"):  # float64 beyond float32's range -> inf, reported next
            X = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X).all():
            raise DataError(w, "X", "features contain NaN or inf")

        Y = _numeric(self.Y, w, "Y")
        if Y.ndim != 2 or Y.shape[0] != N or Y.shape[1] == 0:
            raise DataError(w, "Y", f"expected shape ({N}, C), got {Y.shape}")
        M = _as_bool_mask(self.M, w, "M")
        if M.shape != Y.shape:
            raise DataError(w, "M", f"expected shape {Y.shape} like Y, got {M.shape}")
        observed = Y[M]
        if observed.size and not np.isin(observed, (0, 1)).all():
            raise DataError(w, "Y", "observed labels must be 0 or 1")
        Y = np.where(M, Y, 0).astype(np.float32)

        Y_full = self.Y_full
        if Y_full is not None:
            Y_full = _numeric(Y_full, w, "Y_full")
            if Y_full.shape != Y.shape:
                raise DataError(w, "Y_full", f"expected shape {Y.shape}, got {Y_full.shape}")
            if not np.isin(Y_full, (0, 1)).all():
                raise DataError(w, "Y_full", "labels must be 0 or 1")
            Y_full = Y_full.astype(np.float32)

        keys = np.asarray(self.keys)
        if keys.dtype.kind not in "UST":
            if keys.dtype.kind == "O":
                raise DataError(w, "keys", "object arrays are not accepted (pickle)")
            keys = keys.astype(str)
        if keys.dtype.kind == "S":
            try:
                keys = np.char.decode(keys, "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(w, "keys", "keys are not valid UTF-8") from e
        if keys.shape != (N,):
            raise DataError(w, "keys", f"expected shape ({N},), got {keys.shape}")
        if len(np.unique(keys)) != N:
            dup = _first_duplicate(keys)
            raise DataError(w, "keys", f"duplicate clip key {dup!r}")

        for name, value in (("X", X), ("Y", Y), ("M", M), ("Y_full", Y_full), ("keys", keys)):
            if value is not None:
                value.setflags(write=False)  # shared, never mutated in place
            object.__setattr__(self, name, value)

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def T(self) -> int:
        return self.X.shape[1]

    @property
    def F(self) -> int:
        return self.X.shape[2]

    @property
    def C(self) -> int:
        return self.Y.shape[1]

    def take(self, idx: np.ndarray) -> Split:
        """The rows ``idx`` as a new split."""
        Yf = None if self.Y_full is None else self.Y_full[idx]
        return Split(self.X[idx], self.Y[idx], self.M[idx], self.keys[idx], Yf, self.where)


def _first_duplicate(keys: np.ndarray) -> str:
    seen: set[str] = set()
    for k in keys.tolist():
        if k in seen:
            return k
        seen.add(k)
    return ""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train / valid / test splits of one partially labeled dataset, plus metadata."""

    train: Split
    valid: Split
    test: Split
    classes: tuple[str, ...]
    """Class names, one per column of Y."""
    name: str = "dataset"
    """Short name (``openmic``, ``sonyc-fine``, ``synth-openmic-like`` ...)."""
    source: str = "<memory>"
    """Where it was read from, or how it was generated."""
    observation: Observation = "partial"
    """How training labels were observed: partial, complete, or positives-only."""
    meta: dict = field(default_factory=dict)
    """JSON-serialisable provenance (generator settings, removed fraction, ...)."""

    def __post_init__(self) -> None:
        w = self.source
        if isinstance(self.classes, str | bytes):
            raise DataError(w, "classes", "expected a sequence of class names, got one string")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.observation not in OBSERVATIONS:
            raise DataError(w, "observation", f"must be one of {OBSERVATIONS}")
        C = len(self.classes)
        if C == 0:
            raise DataError(w, "classes", "no class names")
        if len(set(self.classes)) != C:
            raise DataError(w, "classes", "duplicate class names")
        ref = self.train
        for name in SPLITS:
            s = getattr(self, name)
            if not isinstance(s, Split):
                raise DataError(w, name, "not a Split")
            if s.C != C:
                raise DataError(s.where, "Y", f"{s.C} classes but {C} class names")
            if (s.T, s.F) != (ref.T, ref.F):
                raise DataError(s.where, "X", f"frames x features {s.T}x{s.F} differ from "
                                              f"train's {ref.T}x{ref.F}")
        for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
            # A clip in two splits leaks test labels into training or model selection.
            shared = np.intersect1d(getattr(self, a).keys, getattr(self, b).keys)
            if shared.size:
                raise DataError(getattr(self, b).where, "keys",
                                f"clip {str(shared[0])!r} is also in {a} (splits must be disjoint)")
        if not isinstance(self.meta, dict):
            raise DataError(w, "meta", f"expected a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:  # ValueError: a circular reference
            raise DataError(w, "meta", f"not JSON-serialisable: {e}") from e

    def split(self, name: str) -> Split:
        return getattr(self, name)

    @property
    def splits(self) -> dict[str, Split]:
        return {name: getattr(self, name) for name in SPLITS}

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the content (arrays, keys, classes): the cache key of later stages."""
        h = hashlib.sha256()
        h.update(json.dumps([list(self.classes), self.observation]).encode())
        for name in SPLITS:
            s = getattr(self, name)
            for a in (s.X, s.Y, s.M, s.Y_full):
                if a is None:
                    h.update(b"none")
                    continue
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(np.ascontiguousarray(a).data)
            h.update("\x00".join(s.keys.tolist()).encode())
        return h.hexdigest()[:16]

    def with_train(self, train: Split, **changes) -> Dataset:
        """A copy with a new training split (and optionally other fields changed)."""
        return replace(self, train=train, **changes)
