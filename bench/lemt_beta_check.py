"""Why LE+MT collapses on sonyc-like data at 80% of the labels removed (the science check's
table): the same run with beta 0 (stage 1 = B0, stage 2 = LE's masked loss, the EMA teacher
still reported) and with the student reported instead of the EMA teacher, beside LE; seed 0,
20 epochs per stage, 4,000 clips, as ``science_check.py --datasets sonyc-like --n-clips 4000
--epochs 20`` ran them. About 4 minutes on one core.

    python bench/lemt_beta_check.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["OMP_NUM_THREADS"] = "1"

import science_check as sc  # noqa: E402


def main(out: Path = Path("bench/out"), n_clips: int = 4000, epochs: int = 20) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    path = str(sc.data_file("sonyc-like", out, n_clips))
    lemt = sc.config("sonyc-like", "default", "lemt", 0.8, 0, epochs)
    runs = {"le": sc.config("sonyc-like", "default", "le", 0.8, 0, epochs), "lemt": lemt,
            "lemt, beta 0": {**lemt, "beta": 0.0}, "lemt, student": {**lemt, "mt_select": "student"},
            "lemt, beta 0, student": {**lemt, "beta": 0.0, "mt_select": "student"}}
    scores = {}
    for name, cfg in runs.items():
        scores[name] = sc.fit_one((path, cfg))["test/dcase_fine_macro_auprc"]
        print(f"{name:24s} DCASE fine macro AUPRC {scores[name]:.3f}", flush=True)
    return scores


if __name__ == "__main__":
    main()
