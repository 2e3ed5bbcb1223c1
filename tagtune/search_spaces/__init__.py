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
    space_le,
    space_mt,
)

__all__ = [
    "DEFAULT_RANGES_FILE", "PAPER_LR", "SPACES", "Ranges", "load_ranges", "paper_point",
    "space_b0", "space_b1", "space_le", "space_mt",
]
