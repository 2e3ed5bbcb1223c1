"""How long does reading an OpenMIC-size generic file take?

Writes a random dataset the size of OpenMIC-2018 as tagtune prepares it (train 12,678 /
valid 2,237 / test 5,085 clips of 10 x 128 float32 VGGish frames, 20 classes) to a temp
directory, as .h5 and as .npz, and times ``tagtune.study.data.load``:

- ``process``: a fresh ``python -c`` that imports tagtune and loads the file, timed from
  outside (what a Ray worker or a CLI call pays, interpreter start and imports included);
- ``load in process``: ``load`` alone inside that fresh process (cold page cache aside);
- ``load warm``: median of ``--repeats`` calls in this process.

Target: ``load`` under 1 s. Usage: ``python bench/bench_load.py [--repeats 5] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tagtune.study.data import Dataset, Split, load, save

SIZES = {"train": 12_678, "valid": 2_237, "test": 5_085}
T, F, C = 10, 128, 20
TARGET_S = 1.0

CHILD = """
import sys, time
t0 = time.perf_counter()
from tagtune.study.data import load
t1 = time.perf_counter()
ds = load(sys.argv[1])
t2 = time.perf_counter()
print(f"{t1 - t0:.6f} {t2 - t1:.6f} {ds.train.N + ds.valid.N + ds.test.N}")
"""


def openmic_size(seed: int = 0) -> Dataset:
    """Random data with OpenMIC's shapes and roughly its label density (sparse, ~40% observed)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in SIZES.items():
        X = rng.standard_normal((n, T, F), dtype=np.float32)
        Y = (rng.random((n, C)) < 0.4).astype(np.float32)
        M = rng.random((n, C)) < 0.4
        keys = np.array([f"{name}_{i:06d}_{i * 37 % 100_000:06d}" for i in range(n)])
        splits[name] = Split(X, Y * M, M, keys)
    return Dataset(**splits, classes=tuple(f"class_{c:02d}" for c in range(C)), name="bench")


def time_child(path: Path) -> tuple[float, float, float]:
    """(whole process s, import s, load s) of one fresh interpreter loading ``path``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                         text=True, check=True, env=env)
    wall = time.perf_counter() - t0
    t_import, t_load, n = out.stdout.split()
    assert int(n) == sum(SIZES.values()), out.stdout
    return wall, float(t_import), float(t_load)


def time_warm(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        load(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="in-process loads per format (median)")
    ap.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = ap.parse_args()

    ds = openmic_size()
    t0 = time.perf_counter()
    Split(ds.train.X, ds.train.Y, ds.train.M, ds.train.keys)
    t_validate = time.perf_counter() - t0
    print(f"Split validation of train ({ds.train.N} x {T} x {F}): {t_validate:.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        rows = []
        for ext in ("h5", "npz"):
            path = save(ds, root / f"openmic_size.{ext}")
            assert load(path).fingerprint == ds.fingerprint
            wall, t_import, t_load = time_child(path)
            warm = time_warm(path, args.repeats)
            rows.append((ext, path.stat().st_size / 2**20, wall, t_import, t_load, warm))

    header = ("format", "size MiB", "process s", "import s", "load in process s", "load warm s")
    print(" | ".join(header))
    for ext, mib, wall, t_import, t_load, warm in rows:
        print(f"{ext:>6} | {mib:8.1f} | {wall:9.3f} | {t_import:8.3f} | {t_load:17.3f} | "
              f"{warm:11.3f}")
    worst = max(max(r[4], r[5]) for r in rows)
    print(f"target load < {TARGET_S:.1f} s: {'met' if worst < TARGET_S else 'MISSED'} "
          f"(worst {worst:.3f} s)")


if __name__ == "__main__":
    main()
