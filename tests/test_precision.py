"""dtype="auto" (minunet.loading.precision): what it resolves to on each kind of machine, the CPU check against the kernel's
own flags, and the loaders and the pipeline with it (bfloat16 + channels_last where the CPU computes bf16)."""
from pathlib import Path

import pytest
import torch

import minunet.loading.precision as precision
from helpers import TINY, assert_close, randomize_, unet_inputs
from minunet import UNet, load_unet
from minunet.pipelines.image import Pipeline
from minunet.loading.precision import native_bf16, resolve_dtype


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_native_bf16_is_the_cpu_flags():
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":")[1].split())
    assert native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("native", [True, False])
def test_auto_per_machine(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    assert resolve_dtype("auto") == resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", torch.device("cuda:1")) == torch.float16
    assert resolve_dtype("auto", "mps") == torch.float32
    assert resolve_dtype(None) is None and resolve_dtype(torch.float64) == torch.float64
    assert resolve_dtype("bfloat16") == torch.bfloat16


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype='float8': expected a torch dtype, None, 'auto' or one of "
                                         r"\['bfloat16', 'float16', 'float32'\]"):
        resolve_dtype("float8")


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    """A tiny SD 1.5-structured UNet in the diffusers layout, float32."""
    from helpers import diffusers_unet

    folder = tmp_path_factory.mktemp("unet")
    diffusers_unet(randomize_(UNet(TINY["sd15"]).eval(), 0)).save_pretrained(folder)
    return folder


def test_load_unet_auto_on_a_bf16_cpu(monkeypatch, unet_folder):
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    plain = load_unet(unet_folder)
    auto = load_unet(unet_folder, dtype="auto")
    assert plain.dtype == torch.float32 and auto.dtype == torch.bfloat16
    assert auto.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert auto.down_blocks[0].resnets[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, ctx, _ = unet_inputs(TINY["sd15"])
    with torch.no_grad():
        expected = plain(x, t, ctx)
        # channels_last alone: float32 round-off of another convolution algorithm
        assert_close(plain.to(memory_format=torch.channels_last)(x, t, ctx), expected)
        out = auto(x.bfloat16(), t, ctx.bfloat16()).float()
    # bfloat16 keeps 8 bits of mantissa: about 2^-8 relative per operation, a few percent through the whole UNet
    assert_close(out, expected, rel=5e-2)


def test_load_unet_auto_elsewhere_is_float32(monkeypatch, unet_folder):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    auto, plain = load_unet(unet_folder, dtype="auto"), load_unet(unet_folder)
    assert auto.dtype == torch.float32 and auto.conv_in.weight.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(), plain.state_dict().values()))


def test_pipeline_auto(monkeypatch, sd):
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    folder, _ = sd
    pipe = Pipeline.from_pretrained(folder, dtype="auto")
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text.encoders[0].dtype == torch.bfloat16
    image = pipe("a red fox", num_inference_steps=2, height=32, width=32, output_type="pt", progress=False).images
    assert image.dtype == torch.float32 and image.shape == (1, 3, 32, 32) and image.isfinite().all()
