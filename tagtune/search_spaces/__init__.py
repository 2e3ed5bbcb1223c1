"""What Optuna searches, per method; see :mod:`tagtune.search_spaces.spaces`."""

from tagtune.search_spaces.spaces import (
    DEFAULT_RANGES_FILE,
    PAPER_LR,
    SPACES,
    Ranges,
    load_ranges,
    paper_point,
    space_b0,
    space_b1,
    space_epr,
    space_hill,
    space_le,
    space_lemt,
    space_llr,
    space_mt,
    space_pbce,
    space_splc,
    space_wan,
)

__all__ = [
    "DEFAULT_RANGES_FILE", "PAPER_LR", "SPACES", "Ranges", "load_ranges", "paper_point",
    "space_b0", "space_b1", "space_epr", "space_hill", "space_le", "space_lemt", "space_llr",
    "space_mt", "space_pbce", "space_splc", "space_wan",
]
