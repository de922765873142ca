"""The shipped tiny video model (weights/tiny/tiny-video.safetensors, `VideoPipeline.tiny()`, `--model tiny-video`):
a ModelScope-layout file of the video UNet alone, on the tiny image model's VAE and text encoder; over a grid of
colour x shape x direction prompts of the plain form, judged by tests/shapes_judge.py (per-frame judge and the
object's centroid): the centroid moves the prompted way, the colour is right, one object across the frames, and
with FreeU on the video UNet the same; the README's GIF."""
import numpy as np
import pytest
import torch
from PIL import Image

from shapes_judge import judge_clip, score_clips
from minunet import FreeU, VideoPipeline
from minunet.cli import main
from minunet.weights import TINY_VIDEO_MODEL

DIRECTION, COLOUR, ONE_OBJECT = 0.80, 0.90, 0.90  # the thresholds (one object: every clip, less 10%)
SHAPES, DIRECTIONS = ("circle", "square", "triangle"), ("left", "right", "up", "down")
PAIRS = [("red", "blue"), ("yellow", "purple"), ("green", "white"), ("orange", "black")]  # (object, background)
GRID = [(c, s, d, b) for c, b in PAIRS for s in SHAPES for d in DIRECTIONS]           # 4 x 3 x 4 = 48 clips
WORDS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}  # the words
STEPS = 20


def plain(c, s, d, b):
    return f"a {c} {s} moving {WORDS[d]} on a {b} background"


@pytest.fixture(scope="module")
def pipe():
    return VideoPipeline.tiny()


_CLIPS = {}


def clips(pipe, freeu=None):
    """The grid's clips (48, 8, 3, 32, 32) in [0, 1], DDIM 20 steps, guidance 9, seed 0; once per session each."""
    if freeu not in _CLIPS:
        if freeu is not None:
            pipe.enable_freeu(FreeU.preset(freeu))
        try:
            _CLIPS[freeu] = pipe([plain(*x) for x in GRID], num_inference_steps=STEPS, output_type="pt",
                                 generator=torch.Generator().manual_seed(0), progress=False).frames
        finally:
            pipe.disable_freeu()
    return _CLIPS[freeu]


def test_shipped_file_is_a_modelscope_video_unet():
    from minunet import load_unet
    from minunet.loading.io import read_header
    from minunet.models.video import VideoUNet

    assert TINY_VIDEO_MODEL.stat().st_size <= 10_000_000
    header = read_header(TINY_VIDEO_MODEL)[0]
    assert "input_blocks.1.0.temopral_conv.conv4.3.weight" in header  # ModelScope's names, bare
    assert header["input_blocks.0.1.proj_in.weight"]["shape"] == [128, 64, 1]  # its Conv1d temporal projections
    assert {v["dtype"] for v in header.values()} == {"F16"}
    unet = load_unet(TINY_VIDEO_MODEL)
    assert isinstance(unet, VideoUNet) and unet.config.block_out_channels == (64, 128)
    assert unet.config.context_dim == 64 and unet.config.head_size == 16


def test_direction_colour_and_one_object(pipe):
    s = score_clips(clips(pipe), GRID)
    assert s["direction"] >= DIRECTION and s["colour"] >= COLOUR and s["one_object"] >= ONE_OBJECT, s


def test_freeu_on_the_video_unet_changes_the_clips_and_still_passes(pipe):
    plain_clips, freeu_clips = clips(pipe), clips(pipe, "video")
    assert float((plain_clips - freeu_clips).abs().mean()) > 1e-3
    s = score_clips(freeu_clips, GRID)
    assert s["direction"] >= DIRECTION and s["colour"] >= COLOUR and s["one_object"] >= ONE_OBJECT, s


def test_the_readme_gif(tmp_path):
    """The README's command gives the committed GIF: 8 frames, each within 2 of 255 on average, judged the same."""
    from pathlib import Path

    from test_video_io import read_pil

    golden = Path(__file__).resolve().parents[1] / "docs" / "tiny-video-red-circle.gif"
    out = tmp_path / "x.gif"
    assert main(["video", "a red circle moving to the right on a blue background", "--out", str(out)]) == 0
    (got, _), (want, _) = read_pil(out), read_pil(golden)
    assert len(got) == len(want) == 8
    for a, b in zip(got, want):
        diff = np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32))
        assert diff.shape == (32, 32, 3) and diff.mean() <= 2.0, diff.mean()
    as_clip = torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32)).permute(2, 0, 1) / 255 for f in got])
    v = judge_clip(as_clip)
    assert (v["colour"], v["background"], v["direction"], v["one_object"]) == ("red", "blue", "right", True), v
