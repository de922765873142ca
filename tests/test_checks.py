"""minunet.checks (one error per argument kind), config ranges, SDXL VAE detection, offline detection, CLI exits."""
import dataclasses
import math
import time
import warnings

import numpy as np
import pytest
import safetensors.torch as st
import torch
from PIL import Image

import pipes
from minunet import CheckpointError, VAEConfig, checks
from minunet.pipelines import checks as pipeline_checks
from minunet.schedulers.samplers import check_callback, check_generator
from minunet.cli import main
from minunet.schedulers import Schedule
from minunet.loading.configs import unet_config, vae_config


# ---- argument kinds --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, error, message", [
    (lambda: checks.integer("steps", 2.0, 1), TypeError, "steps must be an int, got 2.0"),
    (lambda: checks.integer("steps", True, 1), TypeError, "steps must be an int"),
    (lambda: checks.integer("steps", 0, 1), ValueError, "steps must be an int >= 1, got 0"),
    (lambda: checks.number("guidance_scale", float("nan")), ValueError, "guidance_scale must be finite, got nan"),
    (lambda: checks.number("guidance_scale", -math.inf), ValueError, "must be finite"),
    (lambda: checks.number("x", "7"), TypeError, "x must be a number, got '7'"),
    (lambda: checks.number("strength", 0.0, 0, 1, low_open=True), ValueError, "strength must be in (0, 1], got 0.0"),
    (lambda: pipeline_checks.size("height", 0, 8, 16), ValueError, "height=0 must be a positive multiple of 8, at least 16"),
    (lambda: pipeline_checks.size("height", 8, 8, 16), ValueError, "height=8 must be a positive multiple of 8, at least 16"),
    (lambda: pipeline_checks.size("width", 64.0, 8, 16), TypeError, "width must be an int, got 64.0"),
    (lambda: pipeline_checks.size("width", "64", 8, 16), TypeError, "width must be an int"),
    (lambda: pipeline_checks.prompt("prompt", []), ValueError, "prompt must not be an empty list"),
    (lambda: pipeline_checks.prompt("prompt", ["a", 3]), TypeError, "prompt must be a str or a list of str"),
    (lambda: check_generator(3), TypeError, "generator must be None, a torch.Generator or a list"),
    (lambda: check_generator("cuda"), TypeError, "generator must be"),
    (lambda: check_generator([torch.Generator(), 1]), TypeError, "generator[1] must be a torch.Generator"),
    (lambda: pipeline_checks.latents(torch.zeros(4, 16, 16), (1, 4, 16, 16)), ValueError, "latents have shape [4, 16, 16]"),
    (lambda: pipeline_checks.latents(torch.full((1, 4, 2, 2), math.nan), (1, 4, 2, 2)), ValueError, "NaN or Inf"),
    (lambda: pipeline_checks.latents(np.zeros((1, 4, 2, 2)), (1, 4, 2, 2)), TypeError, "latents must be a float tensor"),
    (lambda: pipeline_checks.image(torch.rand(1, 1, 16, 16)), ValueError, "image: a tensor must be float (B, 3, H, W)"),
    (lambda: pipeline_checks.image(torch.rand(1, 3, 16, 16) * 2), ValueError, "pixel tensors must be in [0, 1]"),
    (lambda: pipeline_checks.image("no-such-cat.png"), ValueError, "image='no-such-cat.png': not an image file"),
    (lambda: pipeline_checks.image(np.zeros((16, 16))), ValueError, "numpy array must be (H, W, 3)"),
    (lambda: pipeline_checks.image(5), TypeError, "image must be a PIL image"),
    (lambda: check_callback(5), TypeError, "callback must be None or a callable"),
    (lambda: pipeline_checks.strength(0.5, has_image=False), ValueError, "strength=0.5 is used only with image="),
    (lambda: pipeline_checks.strength(1.5, has_image=True), ValueError, "strength must be in (0, 1]"),
])
def test_each_kind_names_argument_value_and_allowed(fn, error, message):
    with pytest.raises(error) as e:
        fn()
    assert message in str(e.value)


def test_accepted_values_pass_through(tmp_path):
    g = torch.Generator()
    assert pipeline_checks.size("height", None, 8, 16) is None and pipeline_checks.size("height", 64, 8, 16) == 64
    assert check_generator(g) is g and check_generator([g, g]) == [g, g]
    path = tmp_path / "cat.png"
    Image.new("RGB", (16, 8), "red").save(path)
    assert pipeline_checks.image(path).size == (16, 8)  # a path is opened with PIL
    arr = pipeline_checks.image(np.ones((8, 16, 3), dtype=np.float32) * 0.5)
    assert arr.shape == (1, 3, 8, 16) and float(arr.max()) == 0.5
    assert pipeline_checks.strength(None, has_image=False) is None


# ---- config ranges ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"block_out_channels": 32}, "block_out_channels must be a list"),
    ({"block_out_channels": [32, -64]}, "block_out_channels[1] must be an int >= 1"),
    ({"attention_head_dim": 0}, "num_heads[0] must be an int >= 1"),
    ({"norm_num_groups": 5}, "not divisible"),
    ({"norm_eps": -1.0}, "norm_eps must be in (0, inf)"),
    ({"transformer_layers_per_block": [1, 1, 1]}, "transformer_depth must have 2 entries"),
    ({"cross_attention_dim": [32, 32]}, "context_dim must be an int"),
])
def test_unet_config_ranges(change, message):
    base = {"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 2, "norm_num_groups": 8,
            "cross_attention_dim": 32}
    with pytest.raises(CheckpointError) as e:
        unet_config({**base, **change}, source="x/config.json")
    assert "x/config.json" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("change, message", [
    ({"scaling_factor": float("nan")}, "scaling_factor must be finite"),
    ({"scaling_factor": 0.0}, "scaling_factor must be in (0, inf)"),
    ({"block_out_channels": [32, 48]}, "must be divisible by norm_num_groups=32"),
    ({"latent_channels": 0}, "latent_channels must be an int >= 1"),
])
def test_vae_config_ranges(change, message):
    with pytest.raises(CheckpointError, match=None) as e:
        vae_config({"block_out_channels": [32, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
                                  "up_block_types": ["UpDecoderBlock2D"] * 2, **change}, source="v/config.json")
    assert "v/config.json" in str(e.value) and message in str(e.value)
    with pytest.raises((ValueError, TypeError)):
        dataclasses.replace(VAEConfig(), **{k: v for k, v in change.items() if k != "block_out_channels"}
                            or {"block_out_channels": (32, 48)})


@pytest.mark.parametrize("change, message", [
    ({"beta_start": -0.001}, "beta_start must be in (0, 1)"), ({"beta_end": float("nan")}, "beta_end must be finite"),
    ({"beta_end": 1.0}, "beta_end must be in (0, 1)"), ({"trained_betas": [0.5] * 999 + [-1.0]}, "trained_betas[999]"),
    ({"num_train_timesteps": 1000.0}, "num_train_timesteps must be an int"),
])
def test_schedule_ranges(change, message):
    cfg = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    with pytest.raises((ValueError, TypeError)) as e:
        Schedule.from_config({**cfg, **change})
    assert message in str(e.value)


def test_read_json_names_the_file(tmp_path):
    from minunet.loading.io import read_json

    for content, message in [(b"{", "is not valid JSON"), (b"[1]", "must be a JSON object"),
                             (b'{"a": "\xff"}', "is not UTF-8"), (b"[" * 100_000 + b"]" * 100_000, "config")]:
        path = tmp_path / "config.json"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{path}: .*{message}"):
            read_json(path)


# ---- SDXL VAE detection ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vae_state():
    from minunet.keymaps import vae as vae_keys

    sd = pipes.diffusers_vae(groups=32).state_dict()
    return {k: v.contiguous() for k, v in vae_keys.diffusers_to_original(sd, 2, 1).items()}


def test_sdxl_detected_from_the_unet_label_emb(vae_state, tmp_path):
    from minunet import load_vae

    state = {"first_stage_model." + k: v for k, v in vae_state.items()}
    path = tmp_path / "sd.safetensors"
    st.save_file(state, path)
    assert load_vae(path).scaling_factor == 0.18215
    state["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(4, 8)
    st.save_file(state, path)
    assert load_vae(path).scaling_factor == 0.13025


def test_unrecognised_standalone_vae_warns_with_the_assumed_scaling(vae_state, tmp_path):
    from minunet import VAE_SDXL, load_vae

    path = tmp_path / "my-vae.safetensors"
    st.save_file(vae_state, path)
    with pytest.warns(UserWarning, match=r"assuming the SD 1.x / 2.x VAE's scaling_factor 0.18215.*VAE_SDXL"):
        assert load_vae(path).scaling_factor == 0.18215
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit config: no warning
        cfg = dataclasses.replace(VAE_SDXL, block_out_channels=(32, 32), layers_per_block=1)
        assert load_vae(path, config=cfg).scaling_factor == 0.13025


def test_official_vae_table_knows_the_sdxl_vaes():
    from minunet.loading.official import official_files

    paths = {p for entries in official_files().values() for p, _ in entries}
    for p in ("sdxl-vae/sdxl_vae.safetensors", "stable-diffusion-xl-base-1.0/vae/diffusion_pytorch_model.safetensors",
              "stable-diffusion-xl-base-1.0/vae_1_0/diffusion_pytorch_model.safetensors",
              "stable-diffusion-xl-refiner-1.0/vae/diffusion_pytorch_model.safetensors",
              "stable-diffusion-xl-refiner-1.0/vae_1_0/diffusion_pytorch_model.safetensors"):
        assert p in paths


def test_recognised_by_hash(vae_state, tmp_path, monkeypatch):
    """A file whose size and SHA-256 are in the table as an SDXL VAE gets SDXL's scaling factor, no warning."""
    import minunet.loading.official as ins
    from minunet import load_vae

    path = tmp_path / "sdxl_vae.safetensors"
    st.save_file(vae_state, path)
    table = {path.stat().st_size: [("sdxl-vae/sdxl_vae.safetensors", ins.sha256(path, progress=False))]}
    monkeypatch.setattr(ins, "official_files", lambda: table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_vae(path).scaling_factor == 0.13025


# ---- offline -----------------------------------------------------------------------------------------------------

def test_offline_answer_is_fast(monkeypatch):
    import minunet.loading.io as io

    monkeypatch.setattr(io, "_OFFLINE", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="offline.*local path"):
        io.hub_download("nobody/nothing-here", ["config.json"])
    assert time.perf_counter() - t0 < 5


# ---- CLI -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, code, message", [
    (["--seed", str(2**64)], 2, "--seed 18446744073709551616: must be an integer from 0 to 2**64 - 1"),
    (["--device", "bogus"], 2, "--device bogus: not a device name"),
    (["--cfg", "nan"], 2, "--cfg nan: the guidance scale must be a finite number"),
    (["--out", "."], 2, "is a directory"),
    (["--out", "x.unknownext"], 2, "unknown image extension"),
])
def test_generate_argument_errors(extra, code, message, capsys):
    assert main(["generate", "x", "--model", "tiny", "--steps", "1", *extra]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_runtime_error(capsys):
    assert main(["generate", "x", "--model", "tiny", "--steps", "1", "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_tiny_takes_dtype(tmp_path, monkeypatch):
    from minunet.cli import generate as cli

    pipe = cli.load_pipeline("tiny", dtype=torch.bfloat16, device=torch.device("cpu"))
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    assert next(pipe.text.parameters()).dtype == torch.bfloat16


def test_bad_model_file_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    assert main(["generate", "x", "--model", str(bad), "--steps", "1", "--out", str(tmp_path / "o.png")]) == 1
    assert "bad.safetensors: not a safetensors file" in capsys.readouterr().err
