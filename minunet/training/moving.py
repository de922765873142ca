"""The tiny video model's data set, drawn in code like the picture data set (shapes.py, whose shapes, colours and
renderer it uses): clips of one plain shape of one colour moving in a straight line, at a constant speed, to the
left, right, up or down over a plain background of another colour, with a caption in plain English. Sample i of
seed s is always the same clip and caption (its own random.Random), so any rank or resumed run can draw any slice.

    clips, captions = draw_clips(range(0, 4), seed=0)   # (4, 8, 3, 32, 32) in [-1, 1], 4 strings

The object's side is 25-45% of the image and it travels 30-50% of the image from the first frame to the last
(about 10-16 px at 32 px), staying fully inside every frame. Captions vary (verbs, direction words, size words,
word order); the plain form "a {colour} {shape} moving {direction} on a {colour} background", with the direction
one of "to the left", "to the right", "up", "down", is drawn most often and is always true.
"""
import random

import torch

from .shapes import COLOURS, SHAPES, a, render, size_word

FRAMES = 8
# direction -> unit step (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
PLAIN_WORDS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
OTHER_WORDS = {"left": ("left", "leftwards"), "right": ("right", "rightwards"), "up": ("upwards",),
               "down": ("downwards",)}
SIZE_RANGE = (0.25, 0.45)     # side of the bounding box, fraction of the image
TRAVEL_RANGE = (0.30, 0.50)   # first frame's centre to the last's, fraction of the image (<= 1 - the largest side)
PLAIN = "a {colour} {shape} moving {direction} on a {background} background"


def plain_caption(colour, shape, direction, background):
    """The plain form, word for word; `direction` is a key of DIRECTIONS ("left", ...)."""
    return PLAIN.format(colour=colour, shape=shape, direction=PLAIN_WORDS[direction], background=background)


def draw_clip_params(index, seed):
    """The random choices of clip `index`: colour, background, shape, size, direction, the first frame's centre
    (x, y) and the travel, as fractions of the image, and the caption."""
    rng = random.Random(seed * 1_000_003 + index)
    colour, background = rng.sample(COLOURS, 2)
    shape, direction = rng.choice(SHAPES), rng.choice(tuple(DIRECTIONS))
    size, travel = rng.uniform(*SIZE_RANGE), rng.uniform(*TRAVEL_RANGE)
    half = size / 2
    across = rng.uniform(half, 1 - half)           # the coordinate that does not change
    along = rng.uniform(half, 1 - half - travel)   # the start, measured from the side the object leaves
    dx, dy = DIRECTIONS[direction]
    start = along if dx + dy > 0 else 1 - along
    cx, cy = (start, across) if dx != 0 else (across, start)
    return dict(colour=colour, background=background, shape=shape, size=size, direction=direction, cx=cx, cy=cy,
                travel=travel, caption=caption(rng, colour, shape, direction, background, size))


def centres(params, frames=FRAMES):
    """[(cx, cy)] of each frame: a constant step from the first centre to the last."""
    dx, dy = DIRECTIONS[params["direction"]]
    steps = [params["travel"] * f / (frames - 1) for f in range(frames)]
    return [(params["cx"] + dx * s, params["cy"] + dy * s) for s in steps]


def caption(rng, colour, shape, direction, background, size):
    """One of several true captions; the plain form about half the time (word for word, or with "an")."""
    if rng.random() < 0.5:
        plain = plain_caption(colour, shape, direction, background)
        words = PLAIN_WORDS[direction]
        return plain if rng.random() < 0.5 else f"{a(colour)} {shape} moving {words} on {a(background)} background"
    words = PLAIN_WORDS[direction] if rng.random() < 0.6 else rng.choice(OTHER_WORDS[direction])
    adjective = size_word(size) if rng.random() < 0.6 else None
    thing = f"{adjective} {colour} {shape}" if adjective is not None else f"{colour} {shape}"
    forms = [f"{a(thing)} moving {words} on {a(background)} background", f"{a(thing)} going {words}, {background} "
             "background", f"{a(thing)} sliding {words} across {a(background)} background",
             f"{a(background)} background with {a(thing)} moving {words}", f"{a(thing)} moves {words} on "
             f"{a(background)} background", f"{thing} moving {words}, {background} background",
             f"{a(thing)} on {a(background)} background, moving {words}"]
    return rng.choice(forms)


def render_clip(params, size=32, frames=FRAMES):
    """(frames, 3, size, size) in [-1, 1]: shapes.render at each frame's centre."""
    return torch.stack([render({**params, "cx": x, "cy": y}, size) for x, y in centres(params, frames)])


def draw_clips(indices, seed=0, size=32, frames=FRAMES):
    """Clips (B, frames, 3, size, size) in [-1, 1] and captions of the samples `indices` of the data set `seed`."""
    params = [draw_clip_params(int(i), seed) for i in indices]
    return torch.stack([render_clip(p, size, frames) for p in params]), [p["caption"] for p in params]
