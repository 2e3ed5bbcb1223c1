"""The methods: the four of Gururani & Lerch (2021) and newer ones, one module each, one step signature.

Every method module defines ``step(batch, state) -> (loss, logs)``: the loss of one
mini-batch (the fit loop does backward and the optimizer step) and a dict of detached
scalars to average over the epoch. It also declares its name, a one-line summary, the kinds of
observations it learns from, its parameters and what a study searches, and the hooks it needs
(MT's EMA teacher, LE's stage boundary): see :mod:`~tagtune.study.methods.registry`, which finds
the modules and derives METHODS, the config's checks, the CLI's flags and the search spaces.

- :mod:`~tagtune.study.methods.b0`: missing labels are negatives.
- :mod:`~tagtune.study.methods.b1`: loss masked to the observed labels.
- :mod:`~tagtune.study.methods.le`: label enhancing (Fonseca et al. 2020).
- :mod:`~tagtune.study.methods.mt`: mean teacher (Tarvainen & Valpola 2017).

Beyond the paper:

- :mod:`~tagtune.study.methods.lemt`: LE with MT's consistency in both stages (the paper's future work).
- :mod:`~tagtune.study.methods.llr`: large-loss rejection, LL-R (Kim et al. 2022).
- :mod:`~tagtune.study.methods.hill`: Hill loss (Zhang et al. 2021).
- :mod:`~tagtune.study.methods.splc`: self-paced loss correction, SPLC (Zhang et al. 2021).
- :mod:`~tagtune.study.methods.pbce`: normalised partial BCE (Durand et al. 2019).
- :mod:`~tagtune.study.methods.wan`: weak assume-negative, WAN (Cole et al. 2021).
- :mod:`~tagtune.study.methods.epr`: expected positive regularisation, EPR (Cole et al. 2021).
"""

from __future__ import annotations

# The shared names first: the registry imports every method module, and each of them these.
from tagtune.study.methods.base import ALL, WITH_NEGATIVES, Batch, MethodState, bce, masked_bce
from tagtune.study.methods.registry import (
    METHODS,
    Hooks,
    check_supported,
    get,
    hooks,
    shares_teacher,
    stages,
    supports,
)

__all__ = ["ALL", "METHODS", "WITH_NEGATIVES", "Batch", "Hooks", "MethodState", "bce", "check_supported",
           "get", "hooks", "masked_bce", "shares_teacher", "stages", "supports"]
