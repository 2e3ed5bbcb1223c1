"""Re-rank check: does re-ranking the top trials on extra seeds pick configs that hold up on new seeds?

A study picks each cell's best config by ONE search run's validation score (the objective's best
over the epochs); with a small validation set that run is partly the luckiest. The study's
``rerank: K`` setting instead retrains the top K trials on ``rerank_seeds`` extra seeds and picks
the config with the best MEAN validation score over its search run and those seeds. Here, without
Ray, on synthetic data with complete truth (tagtune.study.data.synth, scaled to ``--clips``), per
cell (method x proportion x world seed), as bench/objective_check.py does: the paper's point and
``--configs - 1`` random configs from the study's search space, each trained once on the search
seed; the single-run choice (today's rule); the re-rank's choice (the top ``--rerank`` by the
single run, each retrained on ``--rerank-seeds`` extra seeds, mean validation score). Then each
chosen config AND the paper's point are trained on ``--replicates`` NEW seeds (none of them the
search seed or a re-rank seed) and scored on the TEST split against the complete truth, at the
epoch the objective selects (as a study's replicates are). Reported: how often the chosen config's
mean test figure over those seeds beats the paper point's on the same seeds, for each rule, and
the mean paired gain.

    python bench/rerank_check.py --quick     # a small version (see --help)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from objective_check import DATASETS, TESTED, _fit_scored, _search_configs  # noqa: E402

SEARCH_SEED, RERANK_SEED, REPLICATE_SEED = 0, 1000, 2000
"""Training-seed offsets from the world seed: the search run, the re-rank's seeds, the test's seeds
(disjoint, as in a study: its re-rank seeds never are a replicate's)."""


def run_cell(dataset: str, method: str, missing: float, world: int, args) -> dict[str, Any]:
    from tagtune.study import objective
    from tagtune.study.config import PRESETS
    from tagtune.study.data.synth import synthesize
    from tagtune.study.folder import train_config

    name = args.objective
    preset = DATASETS[dataset]
    ds = synthesize(dataset, seed=world, n_clips=args.clips)
    base = {k: v for k, v in PRESETS[preset].items() if k != "model"}
    params = _search_configs(method, preset, args.configs, world)

    def fit(i: int, seed: int) -> dict[str, float]:
        """Config i trained with ``seed``: the epoch the objective selects (its val and test)."""
        config = {**base, "model": dict(PRESETS[preset]["model"]), "method": method, "missing": missing,
                  "seed": seed, "epochs": args.epochs, "lr_decay_epochs": [], "threads": 1,
                  "precision": "fp32", "objective": name, **params[i]}
        epochs = _fit_scored(ds, train_config(config))
        return min(epochs, key=lambda e: objective.of_logs(e, name))

    search = [fit(i, world + SEARCH_SEED) for i in range(len(params))]
    order = sorted(range(len(params)), key=lambda i: objective.of_logs(search[i], name))
    single = order[0]
    scores = {str(i): [search[i][name]] + [fit(i, world + RERANK_SEED + j)[name]
                                            for j in range(args.rerank_seeds)]
              for i in order[:args.rerank]}
    reranked = int(objective.rerank_choice(scores, name))
    test: dict[int, list[dict[str, float]]] = {
        i: [fit(i, world + REPLICATE_SEED + r) for r in range(args.replicates)]
        for i in sorted({0, single, reranked})}
    mean = {i: {k: statistics.fmean(e[k] for e in runs) for k in TESTED} for i, runs in test.items()}
    return {"dataset": dataset, "method": method, "missing": missing, "world": world,
            "single": single, "reranked": reranked,
            "val_means": {k: objective.mean_score(v) for k, v in scores.items()},
            "single_test": mean[single], "reranked_test": mean[reranked], "paper_test": mean[0]}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| rule | test F1 @0.5 | test F1 tuned | test mAP | beats paper (F1) | beats paper (mAP) | "
             "gain over paper, mAP (mean) | chose the paper point | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rule, key, pick in (("single run (today)", "single_test", "single"),
                            ("re-rank", "reranked_test", "reranked"), ("paper point", "paper_test", None)):
        m = {k: statistics.fmean(r[key][k] for r in rows) for k in TESTED}
        wins = {k: sum(r[key][k] > r["paper_test"][k] for r in rows) for k in TESTED}
        gain = statistics.fmean(r[key]["test_full/map"] - r["paper_test"]["test_full/map"] for r in rows)
        beat = ("", "") if key == "paper_test" else (
            f"{wins['test_full/f1_macro']}/{len(rows)}", f"{wins['test_full/map']}/{len(rows)}")
        lines.append(f"| {rule} | {m['test_full/f1_macro']:.3f} | {m['test_full/f1_macro_tuned']:.3f} | "
                     f"{m['test_full/map']:.3f} | {beat[0]} | {beat[1]} | {gain:+.3f} | "
                     f"{'' if pick is None else sum(r[pick] == 0 for r in rows)} | {len(rows)} |")
    from scipy.stats import binomtest

    changed = [r for r in rows if r["single"] != r["reranked"]]
    lines.append(f"\nThe re-rank chose another config than the single run in {len(changed)} of {len(rows)} "
                 "cells; there, re-rank minus single run on the test seeds:")
    for k in TESTED:
        d = [r["reranked_test"][k] - r["single_test"][k] for r in changed]
        up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
        p = binomtest(up, up + down).pvalue if up + down else float("nan")
        lines.append(f"- {k}: mean {statistics.fmean(d) if d else float('nan'):+.3f}, "
                     f"higher in {up}, lower in {down} (sign test p = {p:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from tagtune.study import objective

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small: 400 clips, 6 epochs, 4 configs, re-rank 2 on 2 seeds, 2 test seeds")
    p.add_argument("--datasets", default="openmic-like")
    p.add_argument("--methods", default="b1,llr,splc")
    p.add_argument("--missing", default="0.4")
    p.add_argument("--seeds", type=int, default=3, help="synthetic worlds (cells per method x proportion)")
    p.add_argument("--first-world", type=int, default=0, help="the first world's seed (to add worlds)")
    p.add_argument("--configs", type=int, default=8, help="configs per cell (the paper's point first)")
    p.add_argument("--rerank", type=int, default=3, help="top trials re-ranked")
    p.add_argument("--rerank-seeds", type=int, default=2, help="extra seeds of each re-ranked trial")
    p.add_argument("--replicates", type=int, default=3, help="new seeds the chosen configs are tested on")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--objective", default=objective.DEFAULT, choices=objective.OBJECTIVES)
    p.add_argument("--out", default="rerank_check.json")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.epochs, args.configs = 400, 6, 4
        args.rerank, args.rerank_seeds, args.replicates = 2, 2, 2
    rows, t0 = [], time.time()
    for dataset in args.datasets.split(","):
        for missing in (float(x) for x in args.missing.split(",")):
            for method in args.methods.split(","):
                for world in range(args.first_world, args.first_world + args.seeds):
                    rows.append(run_cell(dataset, method, missing, world, args))
                    print(f"{time.time() - t0:7.0f}s {dataset} {missing} {method} world {world}: "
                          f"single {rows[-1]['single']} re-rank {rows[-1]['reranked']}", flush=True)
    text = table(rows)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "table": text}, indent=1))
    print(text)
    print(f"{len(rows)} cells, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
