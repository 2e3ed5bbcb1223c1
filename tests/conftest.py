"""Shared fixtures: tiny datasets and shrunk configs, one Ray for the whole session."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Keep every test on one thread: the suite runs on 2 cores next to Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from tagtune.study.data import Dataset, Split  # noqa: E402


def make_split(rng: np.random.Generator, n: int, T: int = 4, F: int = 6, C: int = 3,
               observed: float = 0.5, prefix: str = "k", full: bool = True) -> Split:
    X = rng.normal(size=(n, T, F)).astype(np.float32)
    Y_full = (rng.random((n, C)) < 0.3).astype(np.float32)
    M = rng.random((n, C)) < observed
    return Split(X, Y_full * M, M, np.array([f"{prefix}{i}" for i in range(n)]),
                 Y_full if full else None, where=f"memory:{prefix}")


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    """A random 3-class dataset, 40/12/12 clips of 4 x 6, half the labels observed (read-only)."""
    rng = np.random.default_rng(0)
    return Dataset(
        train=make_split(rng, 40, prefix="tr"),
        valid=make_split(rng, 12, prefix="va"),
        test=make_split(rng, 12, prefix="te"),
        classes=("a", "b", "c"),
        name="tiny",
    )


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, no dashboard), shut down at the end.

    address="local" starts a fresh instance rather than joining a cluster that another
    process on this machine may have started.
    """
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:  # runs after the last test that used it, failed or not
        ray.shutdown()


TINY_STUDY = dict(methods=("b0", "b1", "le", "mt"), missing=(0.0, 0.4), trials=2, replicates=2,
                  epochs=3, grace_period=1, checkpoint_every=2)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, ray_session, tiny_dataset):
    """One tiny end-to-end study (4 methods x 2 proportions x 2 trials, 2 replicates), run once
    per test session and shared by the study and analysis tests: (settings, StudyResult)."""
    from tagtune.launch.study import run_study
    from tagtune.study import data
    from tagtune.study.folder import StudySettings

    root = tmp_path_factory.mktemp("study")
    path = data.save(tiny_dataset, root / "tiny.h5")
    settings = StudySettings(
        data=str(path), name="tiny", storage=str(root), **TINY_STUDY,
        train={"batch_size": 16, "model": {"layers": 1, "hidden": 8}, "lr_decay_epochs": []},
    )
    return settings, run_study(settings, verbose=0)
