"""Key maps from the original single-file layouts (CompVis / Stability) to minunet (= diffusers) names, as data."""
import re


def count_indices(keys, pattern):
    """How many distinct values the first group of `pattern` takes over `keys` (blocks per level, levels, ...)."""
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})
