"""What a study will run, in one line, said before it starts.

``tagtune study --data data.h5`` alone means every method x every default proportion x 20
trials x 100 epochs, then 5 replicates per cell: :func:`plan_line` says so before anything
runs, with a rough time. The time is one timed epoch of B1 on (a slice of) the study's own
training split with the trials' settings, scaled to the split and multiplied by the epochs
the study can train at most (LE and LE+MT have two stages), over the trials that run at once
(the machine's CPUs, or the cluster's, per trial's CPUs). ASHA stops many trials early, so
the real time is usually below it: the line says "at most".
"""

from __future__ import annotations

import time

from tagtune.study.folder import StudySettings

SAMPLE = 512  # clips the timed epoch trains on: enough for a stable per-clip time, cheap


def trial_epochs(settings: StudySettings) -> tuple[int, int]:
    """(search epochs, replicate epochs) the study can train at most: every trial to the end; the
    second counts the paper point's replicates (``paper_point``) and the re-rank's runs too."""
    from tagtune.study.methods import stages

    per_cell = {m: settings.epochs * len(stages(m)) for m in settings.methods}
    search = sum(per_cell[m] * settings.trials for m in settings.methods) * len(settings.missing)
    runs = (settings.replicates * (2 if settings.paper_point else 1)
            + (settings.rerank * settings.rerank_seeds if settings.rerank > 1 else 0))
    reps = sum(per_cell[m] * runs for m in settings.methods) * len(settings.missing)
    return search, reps


def slots(settings: StudySettings) -> int:
    """Trials that run at once on this machine (a cluster's are counted by Ray once it joins:
    None here means this machine's CPUs, or ``num_cpus``)."""
    from tagtune.launch.ray_start import default_num_cpus

    cpus = settings.num_cpus or default_num_cpus()
    return max(1, cpus // settings.cpus_per_trial)


def epoch_seconds(settings: StudySettings, ds) -> float:
    """Seconds one epoch of one trial takes here: a timed epoch of B1 on up to SAMPLE clips of
    the training split (after one untimed epoch: the first pays for allocation), scaled."""
    from dataclasses import replace

    from tagtune.study.data import Dataset, Split
    from tagtune.study.fit.train import fit
    from tagtune.study.folder import train_config

    n = len(ds.train.keys)
    k = min(n, SAMPLE)
    t = ds.train
    sample = Split(t.X[:k], t.Y[:k], t.M[:k], t.keys[:k], None, where=t.where)
    small = Dataset(train=sample, valid=ds.valid, test=ds.test, classes=ds.classes, name=ds.name)
    cfg = replace(train_config(settings.base_config(method="b1", missing=0.0)),
                  epochs=2, patience=None, device="cpu", lr_decay_epochs=())
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(*_args, **_kwargs) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    fit(small, cfg, on_epoch=tick)
    return times[-1] * n / k


def plan_line(settings: StudySettings, ds=None) -> str:
    """One line: cells, trials, epochs, replicates, and at most how long on this machine's slots
    (``ds``: the study's dataset, loaded if not given; without it no time is said)."""
    cells = len(settings.methods) * len(settings.missing)
    search, reps = trial_epochs(settings)
    head = (f"plan: {_n(cells, 'cell')} ({_n(len(settings.methods), 'method')} x "
            f"{_n(len(settings.missing), 'proportion')}) x {_n(settings.trials, 'trial')} x up to "
            f"{_n(settings.epochs, 'epoch')}, then {_n(settings.replicates, 'replicate')} per cell"
            + (" and of its paper point" if settings.paper_point and settings.replicates else "")
            + (f" (after a re-rank of the top {settings.rerank} on {_n(settings.rerank_seeds, 'seed')})"
               if settings.rerank > 1 else ""))
    if ds is None or settings.gpus_per_trial > 0 or settings.address is not None:
        return head + " (no time estimate: it is timed on this machine's CPUs only)"
    n = slots(settings)
    total = (search + reps) * epoch_seconds(settings, ds) / n
    return (f"{head}; at most ~{_duration(total)} on {n} trial slot{'s' if n != 1 else ''} "
            f"(ASHA stops many trials early)")


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["epoch_seconds", "plan_line", "slots", "trial_epochs"]
