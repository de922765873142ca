"""A small analyser of the tiny model's pictures: which background colour, which object colour, which shape.

- background: the median of the border pixels, named by the nearest palette colour;
- object: the pixels farther than DIFFER from that median; its colour is their median, named by the nearest
  palette colour;
- shape: how much of its bounding box the object fills (square 1.0, circle pi / 4 = 0.79, triangle 0.5), cut at
  the midpoints; rows and columns holding fewer than 2 object pixels do not count for the box (stray pixels).
The palette and shape names are the issue's, written here again (not imported), so the judge is independent of
the data set code it checks.
"""
import torch

PALETTE = {"red": (230, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 230), "yellow": (240, 220, 30),
           "orange": (245, 135, 25), "purple": (140, 40, 180), "white": (245, 245, 245), "black": (15, 15, 15)}
DIFFER = 60.0                     # RGB distance (0..255) from the background that makes a pixel the object's
FILL_CUTS = ((0.64, "triangle"), (0.89, "circle"), (float("inf"), "square"))
MIN_OBJECT = 12                   # fewer object pixels than this: no object


def nearest(rgb):
    names = list(PALETTE)
    table = torch.tensor([PALETTE[n] for n in names], dtype=torch.float32)
    return names[int(((table - rgb) ** 2).sum(-1).argmin())]


def judge(image):
    """(3, H, W) tensor in [0, 1] (or a PIL image) -> dict(background=, colour=, shape=, fill=); colour and shape
    are None when no object is found."""
    x = to_rgb255(image)
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)  # (3, 4 * side)
    bg = border.median(dim=1).values
    mask = (x - bg[:, None, None]).norm(dim=0) > DIFFER                     # (H, W)
    out = dict(background=nearest(bg), colour=None, shape=None, fill=None)
    if int(mask.sum()) < MIN_OBJECT:
        return out
    out["colour"] = nearest(x[:, mask].median(dim=1).values)
    rows = torch.nonzero(mask.sum(1) >= 2).flatten()
    cols = torch.nonzero(mask.sum(0) >= 2).flatten()
    if len(rows) == 0 or len(cols) == 0:
        return out
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    out["fill"] = float(box.float().mean())
    out["shape"] = next(name for cut, name in FILL_CUTS if out["fill"] < cut)
    return out


def to_rgb255(image):
    if isinstance(image, torch.Tensor):
        return image.detach().float().clamp(0, 1) * 255
    import numpy as np
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)


def score(images, expected):
    """Fractions right over a batch: dict(colour=, background=, shape=) for expected [(colour, shape, bg), ...]."""
    verdicts = [judge(im) for im in images]
    n = len(expected)
    return {"colour": sum(v["colour"] == c for v, (c, _, _) in zip(verdicts, expected)) / n,
            "background": sum(v["background"] == b for v, (_, _, b) in zip(verdicts, expected)) / n,
            "shape": sum(v["shape"] == s for v, (_, s, _) in zip(verdicts, expected)) / n}
