"""`minunet generate` with --image (img2img), --mask (inpainting), --refiner, --num-images and the negative
micro-conditioning flags, on the tiny models: each command's PNG is what the same Pipeline call gives."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minunet.cli import main
from minunet.pipelines.image import Pipeline


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_images")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[8:30, 12:40] = 255
    image.save(folder / "image.png")
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(mask).resize((40, 40)).save(folder / "small_mask.png")
    return folder, image, Image.fromarray(mask)


def generate(*argv):
    # float32, as the API pipelines compared with (the CLI's default --dtype auto is bfloat16 on a bf16 CPU)
    model = () if "--model" in argv else ("--model", "tiny-random")
    assert main(["generate", "a cat", "--steps", "2", "--seed", "3", "--dtype", "float32", *model, *argv]) == 0


def same(path, image):
    return np.array_equal(np.asarray(Image.open(path)), np.asarray(image))


def test_img2img(files, tmp_path):
    folder, image, _ = files
    generate("--image", str(folder / "image.png"), "--strength", "0.9", "--out", str(tmp_path / "a.png"))
    expected = Pipeline.tiny_random()("a cat", image=image, strength=0.9, num_inference_steps=2, progress=False,
                               generator=torch.Generator().manual_seed(3)).images[0]
    assert same(tmp_path / "a.png", expected) and expected.size == (48, 40)
    params = json.loads(Image.open(tmp_path / "a.png").text["minunet"])["settings"]
    assert params["image"].endswith("image.png") and params["strength"] == 0.9 and params["mask"] is None


@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-inpainting"])
def test_inpainting(files, tmp_path, model):
    """4- and 9-channel tiny models; the output keeps the image's size (rounded to multiples of 8)."""
    folder, image, mask = files
    generate("--model", model, "--image", str(folder / "image.png"), "--mask", str(folder / "mask.png"),
             "--out", str(tmp_path / "i.png"))
    pipe = Pipeline.tiny_random(in_channels=9 if model == "tiny-random-inpainting" else 4)
    expected = pipe("a cat", image=image, mask_image=mask, num_inference_steps=2, height=40, width=48,
                    progress=False, generator=torch.Generator().manual_seed(3)).images[0]
    assert same(tmp_path / "i.png", expected)


def test_inpainting_padding_mask_crop_keeps_the_rest(files, tmp_path):
    folder, image, mask = files
    generate("--model", "tiny-random-inpainting", "--image", str(folder / "image.png"), "--mask", str(folder / "mask.png"),
             "--padding-mask-crop", "4", "--size", "32x32", "--out", str(tmp_path / "c.png"))
    out = np.asarray(Image.open(tmp_path / "c.png"))
    keep = np.asarray(mask) == 0
    assert out.shape == (40, 48, 3) and (out[keep] == np.asarray(image)[keep]).all()
    assert (out[~keep] != np.asarray(image)[~keep]).any()


def test_base_to_refiner_and_num_images(tmp_path):
    generate("--refiner", "tiny-random", "--high-noise-frac", "0.5", "--size", "32x32", "--num-images", "2",
             "--out", str(tmp_path / "r.png"))
    base = Pipeline.tiny_random()
    kw = dict(num_inference_steps=2, height=32, width=32, progress=False)
    def seeds():  # image i from seed 3 + i (A1111's convention)
        return [torch.Generator().manual_seed(3 + i) for i in range(2)]
    latents = base("a cat", denoising_end=0.5, output_type="latent", num_images_per_prompt=2, generator=seeds(),
                   **kw).images
    expected = Pipeline.tiny_random()("a cat", image=latents, denoising_start=0.5, num_images_per_prompt=2,
                               generator=seeds(), **kw).images
    assert same(tmp_path / "r-0.png", expected[0]) and same(tmp_path / "r-1.png", expected[1])
    assert not same(tmp_path / "r-0.png", expected[1])
    params = json.loads(Image.open(tmp_path / "r-1.png").text["minunet"])["settings"]
    assert params["refiner"] == "tiny-random" and params["high_noise_frac"] == 0.5 and params["seed"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--mask", "MASK"], "--mask needs --image"),
    (["--image", "IMAGE", "--mask", "SMALL"], "is 40x40, --image"),
    (["--model", "tiny-random-inpainting"], "is an inpainting model (9-channel UNet): give --image and --mask"),
    (["--model", "tiny-random-inpainting", "--image", "IMAGE"], "give --image and --mask"),
    (["--strength", "0.5"], "--strength needs --image"),
    (["--image", "nothing.png"], "--image nothing.png: no such file"),
    (["--padding-mask-crop", "4"], "--padding-mask-crop needs --mask"),
    (["--refiner", "tiny-random", "--high-noise-frac", "1.5"], "--high-noise-frac 1.5: must be a fraction in (0, 1)"),
    (["--negative-original-size", "512x512"], "--negative-original-size is SDXL micro-conditioning"),
    (["--negative-crops", "a,b"], "--negative-crops"),
    (["--refiner", "missing.safetensors"], "--refiner missing.safetensors: no such file"),
])
def test_errors(files, argv, message, capsys):
    folder, _, _ = files
    names = {"MASK": folder / "mask.png", "IMAGE": folder / "image.png", "SMALL": folder / "small_mask.png"}
    argv = [str(names.get(a, a)) for a in argv]
    model = () if "--model" in argv else ("--model", "tiny-random")
    assert main(["generate", "x", "--steps", "1", *model, *argv]) == 2
    assert message in capsys.readouterr().err
