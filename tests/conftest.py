"""Shared fixtures: tiny datasets and shrunk configs, one Ray for the whole session, the CLI."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

# Keep every test on one thread: the suite runs on 2 cores next to Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from tagtune.study.config import ModelConfig, TrainConfig  # noqa: E402
from tagtune.study.data import DataError, Dataset, Split, save  # noqa: E402

# A fit of a few epochs in well under a second on the tiny dataset.
TINY_CONFIG = TrainConfig(epochs=2, batch_size=16, lr=3e-3, lr_decay_epochs=(),
                          model=ModelConfig(layers=2, hidden=8, dropout=0.3))
# The same for every trial of a tiny study: its settings' ``train`` overrides.
TINY_TRAIN = {"batch_size": 16, "model": {"layers": 1, "hidden": 8}, "lr_decay_epochs": []}


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


@pytest.fixture
def data_file(tiny_dataset, tmp_path) -> Path:
    """The tiny dataset as a generic .h5 file in the test's own directory."""
    return save(tiny_dataset, tmp_path / "tiny.h5")


def invoke(*args):
    """``tagtune ARGS...`` in this process (arguments of any type, made strings): the result."""
    from typer.testing import CliRunner

    from tagtune.launch.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_data_error(read, filename: str, field: str) -> None:
    """``read()`` raises a DataError of one line that names ``filename`` and ``field``."""
    with pytest.raises(DataError) as info:
        read()
    msg = str(info.value)
    assert "\n" not in msg
    assert filename in msg and f": {field}: " in msg
    assert info.value.field == field


def bench_module(name: str):
    """``bench/NAME.py`` loaded as a module (bench/ holds scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, no dashboard), shut down at the end.

    address="local" starts a fresh instance rather than joining a cluster that another
    process on this machine may have started.
    """
    import ray

    from tagtune.launch.ray_start import WORKER_PRELOAD, trials_on_prestarted_workers

    os.environ.setdefault(*WORKER_PRELOAD)  # workers start with torch imported, as a study's do
    trials_on_prestarted_workers()  # and trials run on them, as a study's do
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:  # runs after the last test that used it, failed or not
        ray.shutdown()


# paper_point off: the tests that count a study's runs count the best configs' replicates (the
# paper point's have tests of their own, tests/launch/test_objective_study.py).
TINY_STUDY = dict(methods=("b0", "b1", "le", "mt"), missing=(0.0, 0.4), trials=2, replicates=2,
                  epochs=3, grace_period=1, checkpoint_every=2, paper_point=False)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, ray_session, tiny_dataset):
    """One tiny end-to-end study (4 methods x 2 proportions x 2 trials, 2 replicates), run once
    per test session and shared by the study and analysis tests: (settings, StudyResult)."""
    from tagtune.launch.study import run_study
    from tagtune.study.folder import StudySettings

    root = tmp_path_factory.mktemp("study")
    path = save(tiny_dataset, root / "tiny.h5")
    settings = StudySettings(data=str(path), name="tiny", storage=str(root), **TINY_STUDY,
                             train=TINY_TRAIN)
    return settings, run_study(settings, verbose=0)
