"""What Optuna searches, per method; see :mod:`tagtune.search_spaces.spaces`."""

from tagtune.search_spaces.spaces import (
    DEFAULT_RANGES_FILE,
    LR,
    PAPER_LR,
    SPACES,
    Ranges,
    default_ranges_yaml,
    load_ranges,
    paper_point,
)

__all__ = ["DEFAULT_RANGES_FILE", "LR", "PAPER_LR", "SPACES", "Ranges", "default_ranges_yaml", "load_ranges",
           "paper_point"]
