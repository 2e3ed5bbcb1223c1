"""``make demo``: a small but real study on synthetic OpenMIC-like data, on this machine.

All four methods, three missing-label proportions, a few Optuna trials per cell,
two replicates of each cell's best config; then where to find everything.
Takes a few minutes on 2 cores. Re-running it continues the same study.
"""

from __future__ import annotations

import time
from pathlib import Path

from tagtune.launch.study import run_study
from tagtune.study import data
from tagtune.study.data.synth import synthesize
from tagtune.study.folder import LOG_FILE, StudySettings

OUT = Path("demo-out").absolute()
# The demo's size; the test suite runs it smaller through main's keyword arguments.
SIZE = dict(n_clips=4000, missing=(0.0, 0.4, 0.8), trials=4, replicates=2, epochs=12,
            grace_period=3, checkpoint_every=4)


def main(out: Path = OUT, **size) -> None:
    t0 = time.perf_counter()
    size = {**SIZE, **size}
    n_clips = size.pop("n_clips")
    path = out / "synth-openmic-like.h5"
    if not path.exists():
        data.save(synthesize("openmic-like", seed=0, n_clips=n_clips), path)
    settings = StudySettings(data=str(path), name="demo", storage=str(out),
                             methods=("b0", "b1", "le", "mt"), train={"lr_decay_epochs": []}, **size)
    result = run_study(settings, verbose=1)
    print()
    print("replicate test F1 macro (full truth), mean over seeds:")
    by_cell: dict[str, list[float]] = {}
    for row in result.replicates:
        by_cell.setdefault(row["cell"], []).append(row.get("test_full/f1_macro", float("nan")))
    for cell, values in by_cell.items():
        print(f"  {cell:10s} {sum(values) / len(values):.3f}  ({len(values)} seeds)")
    print()
    print(f"study:    {result.study_dir}")
    print(f"mlflow:   {result.tracking_uri}")
    print(f"log:      {result.study_dir / LOG_FILE}  (Ray's, Tune's and Optuna's own lines)")
    print(f"open UI:  .venv/bin/tagtune ui {result.study_dir}  (--optuna: Optuna's dashboard too)")
    from tagtune.analysis import analyze

    analysis = analyze(result.study_dir)
    print(f"report:   {analysis.report}")
    print("the answer (per proportion: best method, its margin over B1, clear after Holm?):")
    print("\n".join(f"  {line}" for line in analysis.answer_text().splitlines()))
    print("clear differences:")
    for line in analysis.conclusions:
        print(f"  - {line}")
    print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
