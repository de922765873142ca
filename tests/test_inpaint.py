"""Inpainting inputs and outputs against diffusers' VaeImageProcessor and mask processor: masks and images as PIL
images, tensors and arrays, the padding_mask_crop box, "fill" / "crop" resizing and the final overlay."""
import numpy as np
import pytest
import torch
from PIL import Image

from minunet.pipelines import inpaint


def image_processors():
    from diffusers.image_processor import VaeImageProcessor

    return (VaeImageProcessor(vae_scale_factor=8),
            VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True))


def random_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def blob_mask(w, h, box, soft=0, mode="L"):
    """Black, with a white rectangle `box`, optionally blurred."""
    arr = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    im = Image.fromarray(arr)
    return (inpaint.blur(im, soft) if soft else im).convert(mode)


@pytest.mark.parametrize("mode, soft", [("L", 0), ("L", 3), ("RGB", 2), ("1", 0)])
@pytest.mark.parametrize("size", [(40, 24), (64, 64), (24, 56)])
def test_pil_mask_as_diffusers(mode, soft, size):
    _, masks = image_processors()
    mask = blob_mask(50, 34, (7, 5, 33, 21), soft, mode)
    w, h = size
    ours = inpaint.prepare_mask(mask, h, w)
    theirs = masks.preprocess(mask, height=h, width=w)
    assert ours.shape == (1, 1, h, w) and set(ours.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(34, 50), (1, 34, 50), (2, 34, 50), (2, 1, 34, 50)])
def test_tensor_and_array_masks_as_diffusers(shape):
    _, masks = image_processors()
    soft = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    for mask in (soft, soft.numpy()) if len(shape) < 4 else (soft,):  # 4-d arrays are channels-last
        ours = inpaint.prepare_mask(mask, 24, 40)
        theirs = masks.preprocess(mask, height=24, width=40)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    arr = soft.numpy()
    if arr.ndim == 3 and arr.shape[0] == 2:  # channels-last arrays
        torch.testing.assert_close(inpaint.prepare_mask(arr[..., None], 24, 40),
                                   masks.preprocess(arr[..., None], height=24, width=40), rtol=0, atol=0)


def test_images_as_diffusers():
    images, _ = image_processors()
    pil = random_image(50, 34)
    torch.testing.assert_close(inpaint.prepare_image(pil, 24, 40), images.preprocess(pil, height=24, width=40))
    torch.testing.assert_close(inpaint.prepare_image([pil, random_image(50, 34, 1)], 40, 24),
                               images.preprocess([pil, random_image(50, 34, 1)], height=40, width=24))
    t = torch.rand(2, 3, 34, 50, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(inpaint.prepare_image(t, 24, 40), images.preprocess(t, height=24, width=40))
    torch.testing.assert_close(inpaint.prepare_image(t[0], 24, 40), images.preprocess(t[0], height=24, width=40))
    arr = t.permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(inpaint.prepare_image(arr, 24, 40), images.preprocess(arr, height=24, width=40))
    latents = torch.randn(1, 4, 6, 5)
    assert inpaint.prepare_image(latents, 48, 40) is latents


def test_uint8_and_range_errors():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:5, 2:6] = 200  # uint8 is 0..255: 200 / 255 > 0.5 repaints, as the same PIL mask would
    expected = inpaint.prepare_mask(Image.fromarray(mask), 8, 8)
    torch.testing.assert_close(inpaint.prepare_mask(mask, 8, 8), expected)
    with pytest.raises(ValueError, match=r"image: tensor and array values must be in \[0, 1\]"):
        inpaint.prepare_image(torch.rand(1, 3, 8, 8) * 2 - 1, 8, 8)
    with pytest.raises(ValueError, match="mask_image: expected"):
        inpaint.prepare_mask(torch.rand(1, 3, 8, 8), 8, 8)
    with pytest.raises(TypeError, match="mask_image: expected a PIL image, a torch tensor or a numpy array"):
        inpaint.prepare_mask("mask.png", 8, 8)
    with pytest.raises(ValueError, match="mask_image has no white pixel"):
        inpaint.crop_region(Image.new("L", (16, 16)), 8, 8, 2)


@pytest.mark.parametrize("target", [(64, 64), (64, 32), (32, 64), (48, 40)])
def test_crop_region_as_diffusers(target):
    _, masks = image_processors()
    rng = np.random.default_rng(3)
    for trial in range(40):
        W, H = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        x1, y1 = int(rng.integers(0, W - 2)), int(rng.integers(0, H - 2))
        box = (x1, y1, int(rng.integers(x1 + 1, W + 1)), int(rng.integers(y1 + 1, H + 1)))
        mask = blob_mask(W, H, box, soft=int(rng.integers(0, 3)))
        pad = int(rng.integers(0, 20))
        ours = inpaint.crop_region(mask, *target, pad)
        assert ours == tuple(masks.get_crop_region(mask, *target, pad=pad)), (W, H, box, pad)
        cx1, cy1, cx2, cy2 = ours
        assert 0 <= cx1 < cx2 <= W and 0 <= cy1 < cy2 <= H


@pytest.mark.parametrize("src", [(50, 20), (20, 50), (33, 33), (41, 17)])
@pytest.mark.parametrize("frame", [(40, 24), (24, 40), (32, 32)])
def test_fill_and_crop_resizing_as_diffusers(src, frame):
    images, _ = image_processors()
    im = random_image(*src, seed=4)
    w, h = frame
    assert inpaint.resize_fill(im, w, h).tobytes() == images.resize(im, h, w, resize_mode="fill").tobytes()
    assert inpaint.resize_cover(im, w, h).tobytes() == images.resize(im, h, w, resize_mode="crop").tobytes()


@pytest.mark.parametrize("soft", [0, 3])
def test_overlay_as_diffusers_and_keeps_unmasked_pixels(soft):
    images, _ = image_processors()
    original = random_image(70, 50, seed=5)
    mask = blob_mask(70, 50, (20, 12, 45, 30), soft)
    box = inpaint.crop_region(mask, 32, 24, 6)
    generated = random_image(32, 24, seed=6)
    ours = inpaint.overlay(generated, original, mask, box)
    assert ours.tobytes() == images.apply_overlay(mask, original, generated, box).tobytes()
    a, o, m = np.asarray(ours), np.asarray(original), np.asarray(mask)
    assert (a[m == 0] == o[m == 0]).all()  # every kept pixel is the original's exactly
    assert (a[m == 255] != o[m == 255]).any()  # and the repainted ones come from the generated image
    with pytest.raises(ValueError, match="mask_image is 60x50, image is 70x50"):
        inpaint.overlay(generated, original, mask.resize((60, 50)), box)


def test_masked_image_and_latent_mask():
    pixels = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(7)) > 0.5).float()
    kept = inpaint.masked_image(pixels, mask)
    assert (kept[mask.expand_as(kept) == 1] == 0).all()
    assert torch.equal(kept[mask.expand_as(kept) == 0], pixels[mask.expand_as(pixels) == 0])
    assert torch.equal(inpaint.latent_mask(mask, 2), torch.nn.functional.interpolate(mask, size=(4, 4)))


def test_negative_ids_rules_and_as_given():
    """diffusers' rules (the parity tests check them against its pipelines) and the opt-in negative_ids="as_given"."""
    from minunet.pipelines.micro_conditioning import time_ids

    crops = dict(crops_coords_top_left=(2, 6), negative_crops_coords_top_left=(4, 12))
    pos, neg = time_ids(False, "text-to-image", 64, 48, **crops)
    assert pos == neg == (64, 48, 2, 6, 64, 48)  # negative crops alone: ignored
    pos, neg = time_ids(False, "img2img", 64, 48, negative_original_size=(8, 8), negative_target_size=(16, 16), **crops)
    assert neg == (8, 8, 2, 6, 16, 16)  # img2img / inpainting: the positive crops, always
    pos, neg = time_ids(False, "inpainting", 64, 48, negative_ids="as_given", **crops)
    assert neg == (64, 48, 4, 12, 64, 48)
    pos, neg = time_ids(True, "img2img", 64, 48, aesthetic_score=7.0, **crops)
    assert pos == (64, 48, 2, 6, 7.0) and neg == (64, 48, 4, 12, 2.5)  # the refiner reads its negative crops
    with pytest.raises(ValueError, match="negative_target_size=.* must be a pair"):
        time_ids(False, "img2img", 64, 48, negative_target_size=(1, 2, 3))
    with pytest.raises(ValueError, match="negative_ids='x' must be one of"):
        time_ids(False, "img2img", 64, 48, negative_ids="x")
