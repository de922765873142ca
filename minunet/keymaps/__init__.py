"""Key maps from the original single-file layouts (CompVis / Stability) to minunet (= diffusers) names, as data."""
import re


def count_indices(keys, pattern):
    """How many distinct values the first group of `pattern` takes over `keys` (blocks per level, levels, ...)."""
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def input_levels(keys, op_pattern):
    """The original layout's `input_blocks` as levels: (levels, input blocks, layers per level, the first block of
    each level). Block 0 is conv_in; each level has L layers and (but the last) a downsampler whose key matches
    `op_pattern`; layers is None where the blocks do not divide into the levels."""
    n = count_indices(keys, op_pattern) + 1
    n_in = count_indices(keys, r"input_blocks\.(\d+)\.")
    if n_in % n:
        return n, n_in, None, []
    L = n_in // n - 1
    return n, n_in, L, [1 + i * (L + 1) for i in range(n)]
