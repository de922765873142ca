"""SDXL micro-conditioning: the size / crop / aesthetic-score ids added to the timestep embedding, with the
negative ids for the unconditional half of classifier-free guidance, exactly as diffusers 0.42 builds them.

    base (6 ids)      original_size + crops_coords_top_left + target_size
    refiner (5 ids)   original_size + crops_coords_top_left + (aesthetic_score,)
Sizes are (height, width) and default to the output size; crops default to (0, 0). The negative ids:
    refiner, any mode               negative_original_size (default original_size) + negative_crops_coords_top_left
                                    + (negative_aesthetic_score,)
    base, text-to-image             negative_original_size + negative_crops_coords_top_left + negative_target_size
                                    when BOTH negative sizes are given; otherwise the positive ids, so a
                                    negative_crops_coords_top_left alone, or one negative size alone, is ignored
    base, img2img / inpainting      (negative_original_size or original_size) + crops_coords_top_left
                                    + (negative_target_size or target_size): negative_crops_coords_top_left is
                                    ignored, the POSITIVE crop is used
These are diffusers' rules, its ignored arguments included (its text-to-image docstring's "(1024, 1024) by
default" for the negative sizes is not what it does). `negative_ids="as_given"` instead builds every negative id
from its own argument, defaulting to the positive value, in every mode.
"""

NEGATIVE_IDS = ("diffusers", "as_given")


def time_ids(refiner, mode, height, width, *, original_size=None, crops_coords_top_left=None, target_size=None,
             aesthetic_score=6.0, negative_aesthetic_score=2.5, negative_original_size=None,
             negative_crops_coords_top_left=None, negative_target_size=None, negative_ids="diffusers"):
    """(positive ids, negative ids) as tuples of numbers; mode is "text-to-image", "img2img" or "inpainting"."""
    if negative_ids not in NEGATIVE_IDS:
        raise ValueError(f"negative_ids={negative_ids!r} must be one of {NEGATIVE_IDS}")
    size = (height, width)
    orig = _pair(original_size, "original_size", size)
    crops = _pair(crops_coords_top_left, "crops_coords_top_left", (0, 0))
    target = _pair(target_size, "target_size", size)
    neg_orig = _pair(negative_original_size, "negative_original_size", orig)
    neg_crops = _pair(negative_crops_coords_top_left, "negative_crops_coords_top_left", (0, 0))
    neg_target = _pair(negative_target_size, "negative_target_size", target)
    if refiner:
        return orig + crops + (aesthetic_score,), neg_orig + neg_crops + (negative_aesthetic_score,)
    positive = orig + crops + target
    if negative_ids == "as_given":
        return positive, neg_orig + neg_crops + neg_target
    if mode == "text-to-image":
        both = negative_original_size is not None and negative_target_size is not None
        return positive, (neg_orig + neg_crops + neg_target) if both else positive
    return positive, neg_orig + crops + neg_target


def _pair(value, name, default):
    if value is None:
        return default
    if len(value) != 2:
        raise ValueError(f"{name}={value!r} must be a pair (height, width) / (top, left)")
    return tuple(value)
