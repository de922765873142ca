"""The `minunet` command: generate with the tiny model, inspect written files, and its errors."""
import json

import pytest
import safetensors.torch as st
from PIL import Image

import pipes
from helpers import TINY, randomize_
from minunet import UNet, original_state_dict
from minunet.cli import main


def test_generate_tiny_writes_png_with_parameters(tmp_path, capsys):
    out = tmp_path / "sub" / "fox.png"
    assert main(["generate", "a red fox", "--model", "tiny-random", "--steps", "2", "--seed", "7", "--out", str(out)]) == 0
    assert "RANDOM-weight model: it makes noise, not pictures" in capsys.readouterr().out
    image = Image.open(out)
    assert image.size == (128, 128)
    params = json.loads(image.text["minunet"])["settings"]  # the exact settings (A1111's text: test_png_parameters)
    assert params["prompt"] == "a red fox" and params["steps"] == 2 and params["seed"] == 7
    assert params["model"] == "tiny-random" and params["freeu"] is None and params["clip_skip"] is None


def test_generate_leaves_guidance_and_sampler_options_to_the_pipeline(tmp_path, monkeypatch):
    """--cfg defaults to None (the Pipeline's own default: 7.5 for SD, 5.0 for SDXL); --sampler takes every entry
    of the sampler table; --karras switches the schedule to Karras sigmas."""
    from minunet.pipelines.image import Pipeline
    from minunet.schedulers import SAMPLERS

    seen = []
    real_call = Pipeline.__call__

    def spy(self, prompt, **kw):
        seen.append((kw, self.schedule.use_karras_sigmas))
        return real_call(self, prompt, **kw)
    monkeypatch.setattr(Pipeline, "__call__", spy)
    for sampler in SAMPLERS:
        argv = ["generate", "x", "--model", "tiny-random", "--steps", "2", "--size", "32x32", "--sampler", sampler,
                "--out", str(tmp_path / f"{sampler}.png")] + (["--karras"] if sampler != "ddim" else [])
        assert main(argv) == 0
    assert [kw["sampler"] for kw, _ in seen] == list(SAMPLERS)
    assert all(kw["guidance_scale"] is None for kw, _ in seen)
    assert [karras for _, karras in seen] == [sampler != "ddim" for sampler in SAMPLERS]
    params = json.loads(Image.open(tmp_path / "dpmpp_2m.png").text["minunet"])["settings"]
    assert params["sampler"] == "dpmpp_2m" and params["karras"] and params["cfg"] == 7.5  # the CFG used


def test_generate_compare_freeu_side_by_side(tmp_path):
    out = tmp_path / "cmp.png"
    argv = ["generate", "x", "--model", "tiny-random", "--steps", "2", "--size", "64x48", "--freeu", "sd15",
            "--freeu-mapping", "diffusers", "--compare-freeu", "--out", str(out)]
    assert main(argv) == 0
    image = Image.open(out)
    assert image.size == (128, 48)
    params = json.loads(image.text["minunet"])["settings"]
    assert params["panels"][1]["freeu"] == "1.5,1.6,0.9,0.2" and params["freeu_mapping"] == "diffusers"
    assert params["compare_freeu"] and params["panels"][0]["freeu"] is None
    left, right = image.crop((0, 0, 64, 48)), image.crop((64, 0, 128, 48))
    assert left.tobytes() != right.tobytes()


def test_inspect_single_file(tmp_path, capsys):
    _, path = pipes.sd_single_file(tmp_path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sd1-family UNet with widths [32, 64]" in out
    n = sum(1 for k in st.safe_open(path, "pt").keys() if k.startswith("model.diffusion_model."))
    assert f"key coverage: {n}/{n} model tensors mapped" in out
    for component in ("unet", "vae", "text"):
        assert f"\n  {component} " in out
    assert "official file: no" in out


def test_inspect_reports_unknown_keys(tmp_path, capsys):
    state = {k: v.contiguous() for k, v in original_state_dict(randomize_(UNet(TINY["sd15"]))).items()}
    state["model.diffusion_model.input_blocks.1.0.mystery.weight"] = state["model.diffusion_model.out.2.bias"].clone()
    path = tmp_path / "odd.safetensors"
    st.save_file(state, path)
    assert main(["inspect", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["components"]["unet"]["key_coverage"]["unknown"] == ["input_blocks.1.0.mystery.weight"]


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--model", "missing.safetensors"], "missing.safetensors: no such file"),
    (["generate", "x", "--model", "sd99"], "--model sd99: not a file, folder, Hub repo id or known name"),
    (["generate", "x", "--model", "tiny-random", "--size", "100x64"], "multiples of 8"),
    (["generate", "x", "--model", "tiny-random", "--size", "big"], "expected WIDTHxHEIGHT"),
    (["inspect", "nothing.safetensors"], "nothing.safetensors: no such file"),
    (["download", "sd99"], "unknown name 'sd99'"),
    (["generate", "x", "--model", "tiny-random", "--freeu", "nonsense"], "--freeu nonsense"),
    (["generate", "x", "--model", "tiny-random", "--compare-freeu"], "--compare-freeu needs --freeu"),
    (["generate", "x", "--model", "tiny-random", "--steps", "1", "--clip-skip", "2"], "clip_skip=2 is too large"),
    (["generate", "x", "--model", "tiny-random", "--steps", "0"], "num_inference_steps must be an int >= 1, got 0"),
])
def test_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_network_says_how_to_use_a_local_file(monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["generate", "x", "--model", "sd15"]) == 1  # a model error, not a usage error
    assert "pass its local path" in capsys.readouterr().err


def test_generate_then_upscale_tiny(tmp_path, capsys):
    """--model tiny-random --upscale tiny-random: the SD latents go to the x2 upscaler in one command (128 -> 256
    px)."""
    out = tmp_path / "up.png"
    argv = ["generate", "a red fox", "--model", "tiny-random", "--steps", "2", "--upscale", "tiny-random",
            "--upscale-steps", "2", "--upscale-cfg", "0", "--out", str(out)]
    assert main(argv) == 0
    assert "RANDOM-weight upscaler" in capsys.readouterr().out
    image = Image.open(out)
    assert image.size == (256, 256)
    params = json.loads(image.text["minunet"])["settings"]
    assert (params["upscale"], params["upscale_steps"], params["upscale_cfg"]) == ("tiny-random", 2, 0.0)
    # the same command without --upscale gives the 128 px image the upscaler started from
    assert main(argv[:6] + ["--out", str(tmp_path / "plain.png")]) == 0
    assert Image.open(tmp_path / "plain.png").size == (128, 128)


@pytest.mark.parametrize("argv, message", [
    (["--size", "72x64"], "latents 8x9 (height x width)"),
    (["--upscale-steps", "0"], "num_inference_steps=0 must be an integer >= 1"),
])
def test_upscale_errors(argv, message, capsys):
    assert main(["generate", "x", "--model", "tiny-random", "--steps", "1", "--upscale", "tiny-random", *argv]) == 2
    assert message in capsys.readouterr().err


def test_upscale_unknown_model(capsys):
    assert main(["generate", "x", "--model", "tiny-random", "--steps", "1", "--upscale", "nothing-here"]) == 2
    assert "--upscale nothing-here: not a folder, Hub repo id or known name (tiny, tiny-random, x2)" in capsys.readouterr().err


def test_upscale_official_offline_says_how_to_use_a_folder(monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["generate", "x", "--model", "tiny-random", "--steps", "1", "--upscale", "x2"]) == 1  # a model error
    err = capsys.readouterr().err
    assert "stabilityai/sd-x2-latent-upscaler: could not fetch" in err and "diffusers folder) instead" in err


def test_video_tiny_writes_a_video(tmp_path, capsys):
    from test_video_io import read_pil

    out = tmp_path / "sub" / "fox.gif"
    argv = ["video", "a red fox", "--model", "tiny-video-random", "--frames", "3", "--steps", "2", "--size", "48x32",
            "--fps", "10", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "RANDOM-weight model: it makes noise, not videos" in printed and "3 frames, 48x32" in printed
    frames, duration = read_pil(out)
    assert len(frames) == 3 and frames[0].shape == (32, 48, 3) and duration == 100


def test_video_compare_freeu_side_by_side(tmp_path):
    out = tmp_path / "cmp.webp"
    argv = ["video", "x", "--model", "tiny-video-random", "--frames", "2", "--steps", "2", "--size", "32x32",
            "--freeu", "video", "--compare-freeu", "--out", str(out)]
    assert main(argv) == 0
    from test_video_io import read_pil
    frames, _ = read_pil(out)
    assert len(frames) == 2 and frames[0].shape == (32, 64, 3)
    assert (frames[0][:, :32] != frames[0][:, 32:]).any()


@pytest.mark.parametrize("argv, message", [
    (["--frames", "0"], "--frames 0: must be at least 1"),
    (["--size", "100x64"], "multiples of 8"),
    (["--model", "sd99"], "--model sd99: not a diffusers text-to-video folder, Hub repo id or known name"),
    (["--out", "x.avi", "--frames", "1", "--steps", "1", "--size", "16x16"], "unsupported video file type '.avi'"),
    (["--compare-freeu"], "--compare-freeu needs --freeu"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
])
def test_video_errors(argv, message, capsys, tmp_path):
    assert main(["video", "x", "--model", "tiny-video", "--out", str(tmp_path / "v.gif"), *argv]) == 2
    assert message in capsys.readouterr().err
