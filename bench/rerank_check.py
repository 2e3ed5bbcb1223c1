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
the mean paired gain, with a two-sided sign test over the cells. ``--objectives`` takes several
objectives at once: the runs of a one-stage method serve them all (only the selection differs), so
each further objective costs only the new seeds of the configs it alone chooses; the paper's point
is compared as a study replicates it (its epoch by the same objective) and as the paper's settings
ran before the setting (its epoch by ``val/loss``: one bar for every objective).

    python bench/rerank_check.py --quick     # a small version (see --help)
    python bench/rerank_check.py --quick --objectives val/loss,val/auprc_macro
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cell_search as cs  # noqa: E402  (the part both checks share)

SEARCH_SEED, RERANK_SEED, REPLICATE_SEED = 0, 1000, 2000
"""Training-seed offsets from the world seed: the search run, the re-rank's seeds, the test's seeds
(disjoint, as in a study: its re-rank seeds never are a replicate's)."""
LEGACY = "val/loss"


def run_cell(dataset: str, method: str, missing: float, world: int, args) -> dict[str, Any]:
    from tagtune.study import objective
    from tagtune.study.data.synth import synthesize
    from tagtune.study.methods.registry import stages

    ds = synthesize(dataset, seed=world, n_clips=args.clips)
    params = cs.search_configs(method, cs.DATASETS[dataset], args.configs, world)
    names = args.objectives.split(",")
    runs: dict[tuple, list[dict[str, float]]] = {}
    one_stage = len(stages(method)) == 1

    def fit(i: int, seed: int, name: str) -> dict[str, float]:
        """Config i trained with ``seed``: the epoch ``name`` selects (its val and test). A one-stage
        fit is the same for every objective (trained once); LE's student depends on it."""
        key = (i, seed, None if one_stage else name)
        if key not in runs:
            cfg = cs.cell_config(dataset, method, missing, seed, args.epochs, params[i], objective=name)
            runs[key] = cs.fit_scored(ds, cfg)
        return cs.pick(runs[key], name)

    def tested(i: int, name: str) -> dict[str, float]:
        """Config i on the new seeds, each at the epoch ``name`` selects: the mean test figures."""
        scored = [fit(i, world + REPLICATE_SEED + r, name) for r in range(args.replicates)]
        return {k: statistics.fmean(e[k] for e in scored) for k in cs.TESTED}

    out: dict[str, Any] = {"dataset": dataset, "method": method, "missing": missing, "world": world}
    for name in names:
        search = [fit(i, world + SEARCH_SEED, name) for i in range(len(params))]
        order = sorted(range(len(params)), key=lambda i: objective.of_logs(search[i], name))
        single = order[0]
        scores = {str(i): [search[i][name]] + [fit(i, world + RERANK_SEED + j, name)[name]
                                                for j in range(args.rerank_seeds)]
                  for i in order[:args.rerank]}
        reranked = int(objective.rerank_choice(scores, name))
        out[name] = {"single": single, "reranked": reranked,
                     "val_means": {k: objective.mean_score(v) for k, v in scores.items()},
                     "single_test": tested(single, name), "reranked_test": tested(reranked, name),
                     "paper_test": tested(0, name)}
    out["paper_legacy_test"] = tested(0, LEGACY)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Per objective and rule: the mean test figures over the cells, and the chosen config against
    the paper's point on the same new seeds (cells higher of n, lower in brackets, sign test; mean
    paired gain). A cell whose rule chose the paper's point is a tie."""
    names = [k for k in rows[0] if "/" in k]
    means = " | ".join(f"test {cs.LABELS[k]}" for k in cs.TESTED)
    versus_head = " | ".join(f"beats paper, {cs.LABELS[k]} | gain {cs.LABELS[k]}" for k in cs.TESTED)
    lines = [f"| objective | rule | paper point's epoch by | {means} | {versus_head} | "
             "chose the paper point | n |", "|---" * (8 + 2 * len(cs.TESTED)) + "|"]

    def figures(test: list[dict[str, float]]) -> str:
        return " | ".join(f"{statistics.fmean(t[k] for t in test):.3f}" for k in cs.TESTED)

    for name in names:
        for rule, key, chose in (("single run", "single_test", "single"),
                                 ("re-rank", "reranked_test", "reranked")):
            ours = [r[name][key] for r in rows]
            references = [("the same objective", [r[name]["paper_test"] for r in rows])]
            if name != LEGACY:  # one bar for every objective: the paper's point as run before
                references.append((LEGACY, [r["paper_legacy_test"] for r in rows]))
            for ref_name, paper in references:
                vs = [cs.versus((o[k] for o in ours), (q[k] for q in paper)) for k in cs.TESTED]
                cells = " | ".join(f"{cs.versus_text(v)} | {v['gain']:+.3f}" for v in vs)
                lines.append(f"| {name} | {rule} | {ref_name} | {figures(ours)} | {cells} | "
                             f"{sum(r[name][chose] == 0 for r in rows)} | {len(rows)} |")
    blank = " | |" * len(cs.TESTED)
    papers = {name: [r[name]["paper_test"] for r in rows] for name in names}
    papers.setdefault(LEGACY, [r["paper_legacy_test"] for r in rows])
    for name, paper in papers.items():
        lines.append(f"| paper point | | {name} | {figures(paper)} |{blank} | | {len(rows)} |")
    for name in names:
        changed = [r[name] for r in rows if r[name]["single"] != r[name]["reranked"]]
        lines.append(f"\n{name}: the re-rank chose another config than the single run in {len(changed)} of "
                     f"{len(rows)} cells" + ("; there, re-rank minus single run on the test seeds:"
                                             if changed else "."))
        for k in cs.TESTED if changed else ():
            v = cs.versus((c["reranked_test"][k] for c in changed), (c["single_test"][k] for c in changed))
            lines.append(f"- {cs.LABELS[k]}: mean {v['gain']:+.3f}, higher in {v['higher']}, "
                         f"lower in {v['lower']} (sign test p = {v['p']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from tagtune.study import objective

    p = cs.parser(__doc__, "small: 400 clips, 6 epochs, 4 configs, re-rank 2 on 2 seeds, 2 test seeds",
                  datasets="openmic-like", methods="b1,llr,splc", missing="0.4", epochs=20, clips=2000,
                  out="rerank_check.json")
    p.add_argument("--rerank", type=int, default=3, help="top trials re-ranked")
    p.add_argument("--rerank-seeds", type=int, default=2, help="extra seeds of each re-ranked trial")
    p.add_argument("--replicates", type=int, default=3, help="new seeds the chosen configs are tested on")
    p.add_argument("--objectives", default=objective.DEFAULT,
                   help=f"comma-separated, of {', '.join(objective.OBJECTIVES)}")
    args = p.parse_args(argv)
    if unknown := set(args.objectives.split(",")) - set(objective.OBJECTIVES):
        p.error(f"--objectives: unknown {', '.join(sorted(unknown))}")
    if args.quick:
        args.clips, args.epochs, args.configs = 400, 6, 4
        args.rerank, args.rerank_seeds, args.replicates = 2, 2, 2

    def note(row: dict[str, Any]) -> str:
        return "".join(f"; {k}: single {v['single']} re-rank {v['reranked']}" for k, v in row.items()
                       if "/" in k)

    cs.run_grid(args, run_cell, table, note)


if __name__ == "__main__":
    main()
