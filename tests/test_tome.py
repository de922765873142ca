"""Token merging (minunet.blocks.tome) against the tomesd package's apply_patch on diffusers' UNet with the same
weights, random choice off (use_rand=False): tiny SD 1.5 / 2.1 / SDXL structures at several max_downsample values
(outputs within 1e-5 of their scale), the text-to-image pipeline (latents within 1e-4), a matching worked by hand,
and disable_tome restoring the model bit for bit."""
import pytest
import torch

from helpers import TINY, assert_close, diffusers_kwargs, diffusers_unet, randomize_, unet_inputs
from minunet import UNet
from minunet.blocks.tome import Merge, ToMe, disable_tome, enable_tome, tome_blocks
from pipes import check, diffusers_pipe, gen


@pytest.mark.parametrize("name,hw,max_downsample", [
    ("sd15", (12, 20), 1),   # level 0 only: 2 down + 3 up transformer blocks
    ("sd15", (13, 9), 2),    # odd sizes; levels 0 and 1
    ("sdxl", (12, 20), 2),   # no attention at level 0: level 1's 2 x 2 down + 3 x 2 up blocks
    ("sd21", (16, 16), 8),   # every level and the middle
])
def test_unet_equals_tomesd(name, hw, max_downsample):
    import tomesd

    cfg = TINY[name]
    ours = randomize_(UNet(cfg).eval(), 0)
    ref = diffusers_unet(ours)
    x, t, ctx, kw = unet_inputs(cfg, h=hw[0], w=hw[1])
    with torch.no_grad():
        plain = ours(x, t, ctx, **kw)
        tomesd.apply_patch(ref, ratio=0.5, max_downsample=max_downsample, use_rand=False)
        tome = enable_tome(ours, 0.5, max_downsample=max_downsample)
        assert all(b.tome is tome for b in tome_blocks(ours)) and len(ours._forward_pre_hooks) == 1
        merged = ours(x, t, ctx, **kw)
        assert_close(merged, ref(x, t, ctx, **diffusers_kwargs(kw)).sample)
        assert (merged - plain).abs().max() > 1e-3 * plain.abs().max()  # merging did change the output
        disable_tome(ours)
        assert not ours._forward_pre_hooks and all(b.tome is None for b in tome_blocks(ours))
        assert torch.equal(ours(x, t, ctx, **kw), plain)


def test_which_levels_merge():
    """As tomesd: a block's downsampling is read off its token count against the UNet input's (H, W) = (16, 24)."""
    tome = ToMe(0.5, max_downsample=2)
    tome.size = (16, 24)
    assert tome.match(torch.randn(1, 16 * 24, 4)).r == 192          # level 0: r = int(384 * 0.5)
    assert tome.match(torch.randn(1, 8 * 12, 4)).r == 48            # level 1 (downsampled 2 times)
    assert tome.match(torch.randn(1, 4 * 6, 4)) is None             # level 2: 4 > max_downsample


def test_pipeline_equals_diffusers_with_tomesd(sd):
    import tomesd

    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionPipeline", folder, safety_checker=None, requires_safety_checker=False)
    tomesd.apply_patch(theirs, ratio=0.5, use_rand=False)
    ours.enable_tome(0.5)
    kw = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=4, height=64, width=48)
    try:
        check(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))
    finally:
        ours.disable_tome()


def test_matching_by_hand():
    """A 2 x 4 token image, 2 x 2 cells: dst = tokens 0 and 2 (each cell's top-left), src = 1, 3, 4, 5, 6, 7.
    r = 3: the three src tokens most similar to a dst token merge into it (mean with it)."""
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    rows = [e0, e0 * 3, e1, e1 + 0.1 * e0, e0 + e1, e0 + 0.2 * e1, e1 * 2, e1 + e0 * 0.3]
    x = torch.stack(rows)[None]                           # (1, 8, 2)
    m = Merge(x, 2, 4, r=3, sx=2, sy=2)
    # cosine similarity to the best dst: 1 -> 1.0 (e0), 6 -> 1.0 (e1), 3 -> 0.995 (e1), then 5 (0.98), 7, 4
    merged = m.merge(x)
    assert merged.shape == (1, 5, 2)
    torch.testing.assert_close(merged[0, :3], torch.stack([rows[5], rows[7], rows[4]]))   # kept src, most similar first
    torch.testing.assert_close(merged[0, 3], (rows[0] + rows[1]) / 2)                    # dst 0 with token 1
    torch.testing.assert_close(merged[0, 4], (rows[2] + rows[3] + rows[6]) / 3)          # dst 2 with tokens 3, 6
    y = torch.arange(10.0).reshape(1, 5, 2)
    out = m.unmerge(y)
    want = [y[0, 3], y[0, 3], y[0, 4], y[0, 4], y[0, 2], y[0, 0], y[0, 4], y[0, 1]]    # token i's output
    torch.testing.assert_close(out[0], torch.stack(want))


def test_bad_settings():
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ValueError, match="ToMe: ratio must be a number in"):
            ToMe(ratio=bad)
    with pytest.raises(ValueError, match="ToMe: sx must be an integer >= 1, got 0"):
        ToMe(sx=0)
    tome = ToMe(0.0)
    tome.size = (4, 4)
    assert tome.match(torch.randn(1, 16, 4)) is None   # r = 0: nothing merged, the plain block
