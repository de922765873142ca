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
    assert main(["generate", "a red fox", "--model", "tiny", "--steps", "2", "--seed", "7", "--out", str(out)]) == 0
    assert "RANDOM-weight model: it makes noise, not pictures" in capsys.readouterr().out
    image = Image.open(out)
    assert image.size == (128, 128)
    params = json.loads(image.text["parameters"])
    assert params["prompt"] == "a red fox" and params["steps"] == 2 and params["seed"] == 7
    assert params["model"] == "tiny" and params["freeu"] is None and params["clip_skip"] is None


def test_generate_leaves_guidance_and_sampler_options_to_the_pipeline(tmp_path, monkeypatch):
    """--cfg defaults to None (the Pipeline's own default: 7.5 for SD, 5.0 for SDXL); --sampler takes every entry
    of the sampler table; --karras switches the schedule to Karras sigmas."""
    from minunet.pipeline import Pipeline
    from minunet.schedulers import SAMPLERS

    seen = []
    real_call = Pipeline.__call__

    def spy(self, prompt, **kw):
        seen.append((kw, self.schedule.use_karras_sigmas))
        return real_call(self, prompt, **kw)
    monkeypatch.setattr(Pipeline, "__call__", spy)
    for sampler in SAMPLERS:
        argv = ["generate", "x", "--model", "tiny", "--steps", "2", "--size", "32x32", "--sampler", sampler,
                "--out", str(tmp_path / f"{sampler}.png")] + (["--karras"] if sampler != "ddim" else [])
        assert main(argv) == 0
    assert [kw["sampler"] for kw, _ in seen] == list(SAMPLERS)
    assert all(kw["guidance_scale"] is None for kw, _ in seen)
    assert [karras for _, karras in seen] == [sampler != "ddim" for sampler in SAMPLERS]
    params = json.loads(Image.open(tmp_path / "dpmpp_2m.png").text["parameters"])
    assert params["sampler"] == "dpmpp_2m" and params["karras"] and params["cfg"] is None


def test_generate_compare_freeu_side_by_side(tmp_path):
    out = tmp_path / "cmp.png"
    argv = ["generate", "x", "--model", "tiny", "--steps", "2", "--size", "64x48", "--freeu", "sd15",
            "--freeu-mapping", "diffusers", "--compare-freeu", "--out", str(out)]
    assert main(argv) == 0
    image = Image.open(out)
    assert image.size == (128, 48)
    params = json.loads(image.text["parameters"])
    assert params["freeu"]["b1"] == 1.5 and params["freeu"]["mapping"] == "diffusers" and params["compare_freeu"]
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
    (["generate", "x", "--model", "tiny", "--size", "100x64"], "multiples of 8"),
    (["generate", "x", "--model", "tiny", "--size", "big"], "expected WIDTHxHEIGHT"),
    (["inspect", "nothing.safetensors"], "nothing.safetensors: no such file"),
    (["download", "sd99"], "unknown name 'sd99'"),
    (["generate", "x", "--model", "tiny", "--freeu", "nonsense"], "--freeu nonsense"),
    (["generate", "x", "--model", "tiny", "--compare-freeu"], "--compare-freeu needs --freeu"),
    (["generate", "x", "--model", "tiny", "--steps", "1", "--clip-skip", "2"], "clip_skip=2 is too large"),
    (["generate", "x", "--model", "tiny", "--steps", "0"], "num_steps=0 must be an integer from 1"),
])
def test_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_network_says_how_to_use_a_local_file(monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["generate", "x", "--model", "sd15"]) == 2
    assert "pass its local path" in capsys.readouterr().err
