"""The tiny model's data set, drawn in code: one plain upright shape of one colour on a plain background of another,
at a random size and place, with a caption in plain English. Nothing is downloaded; sample i of seed s is always
the same picture and caption (its own random.Random), so any rank or resumed run can draw any slice of it.

    images, captions = draw_batch(range(0, 16), seed=0)   # (16, 3, 32, 32) in [-1, 1], 16 strings

Shapes: a circle, a square and an isosceles triangle with a horizontal base (apex up); the object's bounding box is
a square of side `size` (25-70% of the image), fully inside the picture. Edges are anti-aliased by 4 x 4
supersampling. Captions vary (size words, position words, word order); the plain form "a {colour} {shape} on a
{colour} background" is drawn most often and is always true.
"""
import random

import torch

# near the usual RGB values of each name (the table)
PALETTE = {"red": (230, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 230), "yellow": (240, 220, 30),
           "orange": (245, 135, 25), "purple": (140, 40, 180), "white": (245, 245, 245), "black": (15, 15, 15)}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
IMAGE_SIZE = 32             # the tiny recipe's size (draw_batch takes any)
SIZE_RANGE = (0.25, 0.70)     # side of the bounding box, as a fraction of the image
SUPERSAMPLE = 4               # sub-pixels per pixel side for anti-aliased edges
PLAIN = "a {colour} {shape} on a {background} background"


def plain_caption(colour, shape, background):
    """The issue's plain form, word for word ("a orange"; training also shows "an orange", see `caption`)."""
    return PLAIN.format(colour=colour, shape=shape, background=background)


def a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def draw_params(index, seed):
    """The random choices of sample `index`: colour, background, shape, size, centre (x, y) as fractions."""
    rng = random.Random(seed * 1_000_003 + index)
    colour, background = rng.sample(COLOURS, 2)   # two different colours
    shape = rng.choice(SHAPES)
    size = rng.uniform(*SIZE_RANGE)
    half = size / 2
    cx, cy = rng.uniform(half, 1 - half), rng.uniform(half, 1 - half)
    return dict(colour=colour, background=background, shape=shape, size=size, cx=cx, cy=cy,
                caption=caption(rng, colour, shape, background, size, cx, cy))


def size_word(size):
    return "small" if size < 0.38 else "large" if size > 0.57 else None


def place_words(cx, cy):
    """The place of a centre in thirds of the image: 'in the top left corner', 'in the center', 'at the top', ..."""
    row = ("top", None, "bottom")[min(int(cy * 3), 2)]
    col = ("left", None, "right")[min(int(cx * 3), 2)]
    if row is not None and col is not None:
        return f"in the {row} {col} corner"
    if row is None and col is None:
        return "in the center"
    return f"at the {row}" if row is not None else f"on the {col}"


def caption(rng, colour, shape, background, size, cx, cy):
    """One of several true captions; the plain form about half the time (word for word, or with "an")."""
    if rng.random() < 0.5:
        plain = plain_caption(colour, shape, background)
        return plain if rng.random() < 0.5 else f"{a(colour)} {shape} on {a(background)} background"
    adjective = size_word(size) if rng.random() < 0.6 else None
    thing = f"{adjective} {colour} {shape}" if adjective is not None else f"{colour} {shape}"
    place = place_words(cx, cy)
    forms = [f"{a(thing)} on {a(background)} background", f"{a(thing)} {place}, {background} background",
             f"{a(thing)} {place} on {a(background)} background", f"{a(background)} background with {a(thing)}",
             f"{a(thing)} against {a(background)} background", f"{thing}, {background} background",
             f"{a(thing)} on {background}"]
    return rng.choice(forms)


def render(params, size=IMAGE_SIZE):
    """(3, size, size) image in [-1, 1] of one sample's parameters."""
    n = size * SUPERSAMPLE
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    y, x = coords[:, None], coords[None, :]
    half = params["size"] / 2
    dx, dy = x - params["cx"], y - params["cy"]
    if params["shape"] == "circle":
        inside = dx ** 2 + dy ** 2 <= half ** 2
    elif params["shape"] == "square":
        inside = (dx.abs() <= half) & (dy.abs() <= half)
    else:  # apex at the top centre, base at the bottom: |dx| <= half * (distance below the apex) / height
        inside = (dy <= half) & (dx.abs() <= (dy + half) / 2)
    cover = inside.float().reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(dim=(1, 3))  # (size, size) in [0, 1]
    fg = torch.tensor(PALETTE[params["colour"]], dtype=torch.float32)[:, None, None]
    bg = torch.tensor(PALETTE[params["background"]], dtype=torch.float32)[:, None, None]
    rgb = bg + (fg - bg) * cover  # (3, size, size) in 0..255
    return rgb / 127.5 - 1


def draw_batch(indices, seed=0, size=IMAGE_SIZE):
    """Images (B, 3, size, size) in [-1, 1] and captions of the samples `indices` of the data set `seed`."""
    params = [draw_params(int(i), seed) for i in indices]
    return torch.stack([render(p, size) for p in params]), [p["caption"] for p in params]


def draw_plain(colour, shape, background, *, size_fraction=0.5, cx=0.5, cy=0.5, size=IMAGE_SIZE):
    """One picture of given parameters (tests: img2img / inpainting starting points)."""
    return render(dict(colour=colour, shape=shape, background=background, size=size_fraction, cx=cx, cy=cy), size)
