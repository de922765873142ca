"""FreeU: the FFT-free filter against diffusers' fourier_filter, the decoder integration against diffusers'
enable_freeu and against a reference written here from the definitions (FFT filter, per-resnet rule via hooks),
and the fused Triton kernel against the pure-torch path (through Triton's interpreter on CPU)."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

# Triton decides interpreter or GPU when a kernel is decorated, i.e. when minunet.kernels.freeu_triton is first
# imported (at the first kernel call): set the switch before that. With CUDA present, the kernels run for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from diffusers.utils.torch_utils import fourier_filter as diffusers_fourier_filter  # noqa: E402
from helpers import TINY, assert_close, diffusers_kwargs, diffusers_unet, randomize_, unet_inputs  # noqa: E402
from minunet import UNet, kernels  # noqa: E402
from minunet.blocks import unet_blocks  # noqa: E402
from minunet.blocks.freeu import fourier_filter, freeu_concat, fused_freeu_concat, structure_map  # noqa: E402
from minunet.freeu import PRESETS, FreeU, list_presets  # noqa: E402


def close_to_reference(actual, expected, x, rel=1e-5, msg=None):
    """Within `rel` of the input's largest magnitude: a filter with s = 0 can zero a whole plane, where a bound
    relative to the output would ask for exact zeros."""
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(x.detach().abs().max()),
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


# ---------------------------------------------------------------------------------------------------- the filter

SHAPES = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 9), (9, 1), (2, 7), (3, 3), (3, 8), (5, 7), (8, 8), (7, 16),
          (16, 9), (13, 13), (32, 32), (24, 40)]


@pytest.mark.parametrize("hw", SHAPES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_filter_matches_diffusers(hw):
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(hw[0] * 100 + hw[1]))
    for s in (0.2, 0.9, 0.0, 0.6, 1.5, -0.3):
        close_to_reference(fourier_filter(x, 1, s), diffusers_fourier_filter(x, 1, s), x, msg=f"{hw} s={s}")


def test_filter_edge_cases_in_closed_form():
    """What the reference does at the edges, written out: a 2 x 2 plane is masked entirely (bins 0 and the Nyquist
    bin -1 = 1 on each axis), and so is a 1 x 1 or 1 x 2 plane (the slice [-1:1] of a length-1 axis is [0:1])."""
    g = torch.Generator().manual_seed(0)
    for hw in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        x = torch.randn(1, 2, *hw, generator=g)
        close_to_reference(fourier_filter(x, 1, 0.3), 0.3 * x, x, rel=1e-6)
    # 1 x W: only the row bin 0, columns {0, -1}: y = x - (1 - s) (mean + first-harmonic projection / 2)
    x = torch.randn(1, 1, 1, 9, dtype=torch.float64, generator=g)
    n = torch.arange(9, dtype=torch.float64)
    cos, sin = torch.cos(2 * torch.pi * n / 9), torch.sin(2 * torch.pi * n / 9)
    half_projection = ((x * cos).sum() * cos + (x * sin).sum() * sin) / 9
    close_to_reference(fourier_filter(x, 1, 0.3), x - 0.7 * (x.mean() + half_projection), x, rel=1e-12)


@pytest.mark.parametrize("threshold", [0, 2, 3, 5])
def test_filter_other_thresholds_match_diffusers(threshold):
    """t > 1, including H < 2t, where the reference's negative slice start wraps around."""
    g = torch.Generator().manual_seed(threshold)
    for hw in [(1, 1), (2, 3), (3, 3), (4, 5), (5, 8), (7, 4), (9, 12), (16, 16)]:
        x = torch.randn(1, 2, *hw, generator=g)
        close_to_reference(fourier_filter(x, threshold, 0.4), diffusers_fourier_filter(x, threshold, 0.4), x,
                           msg=f"{hw} t={threshold}")


def test_filter_float64_is_exact():
    """In float64 the closed form and a float64 FFT agree to round-off: the maths is exact, not approximate."""
    x = torch.randn(2, 3, 11, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert fourier_filter(x, 1, 0.2).dtype == torch.float64
    close_to_reference(fourier_filter(x, 1, 0.2), fft_filter(x, 0.2), x, rel=1e-13)


@pytest.mark.parametrize("dtype,rel", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_filter_half_precision_keeps_dtype(dtype, rel):
    x = torch.randn(2, 4, 9, 16, generator=torch.Generator().manual_seed(4)).to(dtype)
    y = fourier_filter(x, 1, 0.2)
    assert y.dtype == dtype and y.shape == x.shape
    # the fp32 result of the same (rounded) input, rounded once: the error is the output rounding only
    close_to_reference(y.float(), fourier_filter(x.float(), 1, 0.2), x.float(), rel=rel)
    close_to_reference(y.float(), diffusers_fourier_filter(x.float(), 1, 0.2), x.float(), rel=rel)


def test_filter_rejects_a_non_integer_threshold():
    with pytest.raises(TypeError):
        fourier_filter(torch.zeros(1, 1, 4, 4), 1.5, 0.2)


def test_filter_compiles_fullgraph():
    torch._dynamo.reset()
    compiled = torch.compile(fourier_filter, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(5))
    close_to_reference(compiled(x, 1, 0.3), diffusers_fourier_filter(x, 1, 0.3), x)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MINUNET_SLOW") != "1", reason="inductor compile (~30 s cold): MINUNET_SLOW=1")
def test_filter_compiles_with_inductor():
    torch._dynamo.reset()
    compiled = torch.compile(fourier_filter, fullgraph=True)
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(5))
    close_to_reference(compiled(x, 1, 0.3), diffusers_fourier_filter(x, 1, 0.3), x)


# ------------------------------------------------------------------------------- reference FreeU, from the notes

def fft_filter(x, s):
    """The official filter: fftn, fftshift, centred 2 x 2 mask, ifftshift, ifftn, real part (in float64)."""
    X = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=(-2, -1)), dim=(-2, -1))
    H, W = x.shape[-2:]
    mask = torch.ones(H, W, dtype=torch.float64)
    mask[H // 2 - 1:H // 2 + 1, W // 2 - 1:W // 2 + 1] = s
    return torch.fft.ifftn(torch.fft.ifftshift(X * mask, dim=(-2, -1)), dim=(-2, -1)).real.to(x.dtype)


def reference_freeu(h, hs, b, s, version):
    half = h.shape[1] // 2
    if version == 1:
        factor = b
    else:  # paper eqs. 3-4: channel mean, min-max normalised per sample
        m = h.mean(1, keepdim=True)
        lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
        factor = 1 + (b - 1) * (m - lo) / (hi - lo)
    return torch.cat([h[:, :half] * factor, h[:, half:], fft_filter(hs, s)], dim=1)


def decoder_resnets(cfg):
    """(up block, resnet, backbone channels, skip channels) of every decoder resnet: up block i works at width
    chans[i] (levels read backwards); its resnet 0 takes the width of the block below, its last skip comes from
    the next level's encoder."""
    chans = cfg.block_out_channels[::-1]
    n = cfg.layers_per_block + 1
    for i, c in enumerate(chans):
        for j in range(n):
            backbone = chans[max(i - 1, 0)] if j == 0 else c
            skip = chans[min(i + 1, len(chans) - 1)] if j == n - 1 else c
            yield i, j, backbone, skip


def reference_stage(mapping, cfg, i, backbone):
    if mapping == "diffusers":
        return {0: 1, 1: 2}.get(i)
    return {4 * cfg.block_out_channels[0]: 1, 2 * cfg.block_out_channels[0]: 2}.get(backbone)


@torch.no_grad()
def reference_forward(model, inputs, s1, s2, b1, b2, mapping, version):
    """The plain model with FreeU applied by forward pre-hooks on each decoder resnet's concatenated input."""
    x, t, ctx, kw = inputs
    handles = []
    for i, j, backbone, skip in decoder_resnets(model.config):
        stage = reference_stage(mapping, model.config, i, backbone)
        if stage is None:
            continue
        b, s = (b1, s1) if stage == 1 else (b2, s2)

        def hook(module, args, backbone=backbone, skip=skip, b=b, s=s):
            z, temb = args
            assert z.shape[1] == backbone + skip
            return reference_freeu(z[:, :backbone], z[:, backbone:], b, s, version), temb
        handles.append(model.up_blocks[i].resnets[j].register_forward_pre_hook(hook))
    saved = model.freeu
    model.disable_freeu()
    try:
        return model(x, t, ctx, **kw)
    finally:
        if saved is not None:
            model.enable_freeu(saved)
        for handle in handles:
            handle.remove()


# -------------------------------------------------------------------------------------------- UNet integration

# the TINY structures, and the same structures with the real width ratios (1, 2, 4, 4) and (1, 2, 4), on which
# the official channel rule picks the resnets it picks on the full-size models
CONFIGS = {
    "sd15": TINY["sd15"],
    "sdxl": TINY["sdxl"],
    "sd15-ratios": dataclasses.replace(TINY["sd15"], block_out_channels=(32, 64, 128, 128)),
    "sdxl-ratios": dataclasses.replace(TINY["sdxl"], block_out_channels=(32, 64, 128)),
}
FACTORS = dict(s1=0.9, s2=0.2, b1=1.3, b2=1.6)


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    cfg = CONFIGS[request.param]
    ours = randomize_(UNet(cfg).eval(), seed=7)
    inputs = unet_inputs(cfg)
    with torch.no_grad():
        plain = ours(*inputs[:3], **inputs[3])
    return request.param, ours, inputs, plain


@torch.no_grad()
def test_diffusers_mapping_matches_diffusers_enable_freeu(model):
    name, ours, (x, t, ctx, kw), plain = model
    ref = diffusers_unet(ours)
    ref.enable_freeu(**FACTORS)
    expected = ref(x, t, ctx, **diffusers_kwargs(kw)).sample
    ours.enable_freeu(FreeU.from_arguments(FACTORS["s1"], FACTORS["s2"], FACTORS["b1"], FACTORS["b2"], mapping="diffusers", version=1))
    try:
        out = ours(x, t, ctx, **kw)
    finally:
        ours.disable_freeu()
    assert_close(out, expected)
    assert (out - plain).abs().max() > 1e-2 * plain.abs().max()  # FreeU did something


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("mapping", ["official", "diffusers"])
@torch.no_grad()
def test_freeu_matches_reference(model, mapping, version):
    name, ours, inputs, plain = model
    x, t, ctx, kw = inputs
    expected = reference_forward(ours, inputs, **FACTORS, mapping=mapping, version=version)
    ours.enable_freeu(FreeU(**FACTORS, mapping=mapping, version=version))
    try:
        out = ours(x, t, ctx, **kw)
    finally:
        ours.disable_freeu()
    assert_close(out, expected)
    assert torch.equal(ours(x, t, ctx, **kw), plain)  # disable_freeu restores the plain model exactly


@torch.no_grad()
def test_zero_factor_is_applied(model):
    """0.0 is a factor (diffusers' truthiness test would switch FreeU off)."""
    name, ours, inputs, plain = model
    x, t, ctx, kw = inputs
    zeros = dict(s1=0.0, s2=0.2, b1=1.3, b2=0.0)
    expected = reference_forward(ours, inputs, **zeros, mapping="diffusers", version=1)
    ours.enable_freeu(FreeU.from_arguments(zeros["s1"], zeros["s2"], zeros["b1"], zeros["b2"], mapping="diffusers"))
    try:
        out = ours(x, t, ctx, **kw)
    finally:
        ours.disable_freeu()
    assert_close(out, expected)
    assert (out - plain).abs().max() > 1e-2 * plain.abs().max()


# The notes' table for SD 1.x / 2.x at 512 px, in units of the model channels (320): (up block, resnet) ->
# (backbone, skip, diffusers stage, official stage).
SD15_TABLE = {
    (0, 0): (4, 4, 1, 1), (0, 1): (4, 4, 1, 1), (0, 2): (4, 4, 1, 1),
    (1, 0): (4, 4, 2, 1), (1, 1): (4, 4, 2, 1), (1, 2): (4, 2, 2, 1),
    (2, 0): (4, 2, None, 1), (2, 1): (2, 2, None, 2), (2, 2): (2, 1, None, 2),
    (3, 0): (2, 1, None, 2), (3, 1): (1, 1, None, None), (3, 2): (1, 1, None, None),
}
# SDXL: only up block 1 resnet 0 (b1 officially) and up block 2 resnet 0 (b2 officially) differ
SDXL_TABLE = {
    (0, 0): (4, 4, 1, 1), (0, 1): (4, 4, 1, 1), (0, 2): (4, 2, 1, 1),
    (1, 0): (4, 2, 2, 1), (1, 1): (2, 2, 2, 2), (1, 2): (2, 1, 2, 2),
    (2, 0): (2, 1, None, 2), (2, 1): (1, 1, None, None), (2, 2): (1, 1, None, None),
}


@pytest.mark.parametrize("cfg,table", [(CONFIGS["sd15-ratios"], SD15_TABLE), (CONFIGS["sdxl-ratios"], SDXL_TABLE)],
                         ids=["sd15", "sdxl"])
def test_stage_tables(cfg, table):
    """Which resnets get (b1, s1) and (b2, s2) under each mapping, as the notes' tables say, read off what the
    model's up blocks actually pass to FreeU."""
    calls, current = [], {}
    model = UNet(cfg).eval()
    x, t, ctx, kw = unet_inputs(cfg, batch=1, h=8, w=8, tokens=2)
    c0 = cfg.block_out_channels[0]
    hooks = [block.register_forward_pre_hook(lambda m, a, i=i: current.update(block=i))
             for i, block in enumerate(model.up_blocks)]
    for mapping in ("diffusers", "official"):
        freeu = FreeU(**FACTORS, mapping=mapping)
        model.enable_freeu(freeu)
        stages = {freeu.at(1): 1, freeu.at(2): 2, None: None}

        def spy(h, hs, stage):  # what each decoder resnet is handed
            calls.append((mapping, current["block"], h.shape[1], hs.shape[1], stages[stage]))
            return torch.cat([h, hs], dim=1)

        with torch.no_grad(), mock.patch.object(unet_blocks, "decoder_input", spy):
            model(x, t, ctx, **kw)
    for hook in hooks:
        hook.remove()
    seen = {}
    for mapping, i, backbone, skip, stage in calls:  # resnet index j = order of the calls within an up block
        j = sum(1 for key in seen if key[:2] == (mapping, i))
        seen[mapping, i, j] = (backbone, skip, stage)
    for (i, j), (backbone, skip, diffusers_stage, official_stage) in table.items():
        assert seen["diffusers", i, j] == (backbone * c0, skip * c0, diffusers_stage), (i, j)
        assert seen["official", i, j] == (backbone * c0, skip * c0, official_stage), (i, j)
    assert len(seen) == 2 * len(table)
    differ = [k for k in table if table[k][2] != table[k][3]]
    assert len(differ) == (7 if cfg is CONFIGS["sd15-ratios"] else 2)


@torch.no_grad()
def test_official_and_diffusers_mappings_differ_on_sd15():
    cfg = CONFIGS["sd15-ratios"]
    ours = randomize_(UNet(cfg).eval(), seed=7)
    inputs = unet_inputs(cfg)
    official = reference_forward(ours, inputs, **FACTORS, mapping="official", version=1)
    diffusers_like = reference_forward(ours, inputs, **FACTORS, mapping="diffusers", version=1)
    assert (official - diffusers_like).abs().max() > 1e-2 * official.abs().max()


def test_enable_freeu_arguments():
    unet = UNet(TINY["sd15"])
    unet.enable_freeu(FreeU.from_arguments(0.9, 0.2, 1.2, 1.4))  # the pipelines' form, diffusers' order: s1, s2, b1, b2
    assert unet.freeu == FreeU(s1=0.9, s2=0.2, b1=1.2, b2=1.4, mapping="official", version=1)
    unet.enable_freeu(FreeU.from_arguments(FreeU.preset("sdxl")))
    assert unet.freeu is PRESETS["sdxl"][0]
    assert unet.disable_freeu().freeu is None
    with pytest.raises(TypeError):
        FreeU.from_arguments(FreeU.preset("sdxl"), 0.2)
    with pytest.raises(TypeError, match="takes a FreeU"):
        unet.enable_freeu(0.9)
    with pytest.raises(ValueError, match="mapping"):
        FreeU.from_arguments(0.9, 0.2, 1.2, 1.4, mapping="comfy")
    with pytest.raises(ValueError, match="version"):
        FreeU(**FACTORS, version=3)
    with pytest.raises(ValueError, match="s2"):
        FreeU.from_arguments(0.9, None, 1.2, 1.4)
    with pytest.raises(KeyError, match="sdxl-sweep"):
        FreeU.preset("sdxl2")


def test_presets_and_docs_table():
    assert FreeU.preset("sd15") == FreeU(b1=1.5, b2=1.6, s1=0.9, s2=0.2, version=2)
    assert FreeU.preset("sdxl-sweep") == FreeU(b1=1.1, b2=1.2, s1=0.6, s2=0.4, mapping="diffusers")
    docs = Path(__file__).resolve().parents[1] / "README.md"
    assert list_presets() in docs.read_text(), "README.md's FreeU preset table is out of date: paste list_presets()"


# -------------------------------------------------------------------------------------- pure-torch freeu_concat

def test_freeu_concat_is_out_of_place_and_differentiable():
    g = torch.Generator().manual_seed(8)
    h = torch.randn(2, 6, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    hs = torch.randn(2, 4, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    before = h.detach().clone(), hs.detach().clone()
    for version in (1, 2):
        out = freeu_concat(h, hs, b=1.4, s=0.2, version=version)
        close_to_reference(out, reference_freeu(h, hs, 1.4, 0.2, version), out, rel=1e-12)
        assert torch.equal(h.detach(), before[0]) and torch.equal(hs.detach(), before[1])
        small = (h[:1, :, :3, :4].detach().requires_grad_(), hs[:1, :, :3, :4].detach().requires_grad_())
        assert torch.autograd.gradcheck(lambda a, c: freeu_concat(a, c, b=1.4, s=0.2, version=version), small)


def test_structure_map_guards_a_constant_map():
    """A constant channel mean (here a 1 x 1 latent, or a constant feature) has no structure: factor 1, no NaN."""
    for h in (torch.randn(2, 4, 1, 1), torch.full((2, 4, 3, 3), 0.5)):
        m = structure_map(h)
        assert torch.equal(m, torch.zeros_like(m))
        assert torch.equal(freeu_concat(h, h, b=1.5, s=1.0, version=2)[:, :4], h)


# ------------------------------------------------------------------------------------------ the Triton kernel

WITHOUT_TRITON = """
import sys
from importlib.abc import MetaPathFinder

class NoTriton(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError("No module named 'triton'")

sys.meta_path.insert(0, NoTriton())
import torch
import minunet
from minunet import UNet, kernels
from minunet.blocks.freeu import decoder_input
from minunet.freeu import FreeU

assert not kernels.available()
h = torch.randn(1, 4, 3, 5)
stage = FreeU(s1=0.9, s2=0.2, b1=1.3, b2=1.4).plan([[4]], 1)[0][0]  # stage 1: keyed on 4 x 1 channels
out = decoder_input(h, h, stage)  # the torch path
try:
    kernels.fused_decoder_input(h, h, b=1.3, s=0.2)
except ModuleNotFoundError as e:
    assert "pip install triton" in str(e)
else:
    raise AssertionError("freeu_concat ran without triton")
assert not any(m == "triton" or m.startswith("triton.") for m in sys.modules)
print("ok")
"""


def test_package_works_without_triton():
    run = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["ok"], run.stderr[-4000:]


DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(
               not kernels.interpreting(), reason="CPU kernels need TRITON_INTERPRET=1 (set when CUDA is absent)")),
           pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               not torch.cuda.is_available() or kernels.interpreting(), reason="needs CUDA without the interpreter")])]
needs_triton = pytest.mark.skipif(not kernels.available(), reason="triton is not installed (pip install triton)")

# (h shape, hs shape): odd, 1 x 1, 1 x W, the Nyquist 2 x 2, odd channel counts, a plane wider than one tile
KERNEL_CASES = [((2, 6, 5, 7), (2, 4, 5, 7)), ((1, 3, 1, 1), (1, 2, 1, 1)), ((1, 4, 1, 9), (1, 3, 1, 9)),
                ((2, 5, 2, 2), (2, 3, 2, 2)), ((1, 2, 9, 131), (1, 1, 9, 131)), ((1, 4, 8, 8), (1, 4, 8, 8))]


@needs_triton
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("version", [1, 2])
def test_kernel_matches_torch(device, version):
    g = torch.Generator().manual_seed(9)
    for shape_h, shape_s in KERNEL_CASES:
        h, hs = torch.randn(shape_h, generator=g).to(device), torch.randn(shape_s, generator=g).to(device)
        for b, s in [(1.3, 0.2), (0.0, 0.0)]:
            out = fused_freeu_concat(h, hs, b=b, s=s, version=version)
            expected = freeu_concat(h, hs, b=b, s=s, version=version)
            assert out.shape == expected.shape and out.dtype == h.dtype
            close_to_reference(out, expected, torch.cat([h, hs], 1), rel=1e-6, msg=f"{shape_h} {shape_s} b={b} s={s}")


@needs_triton
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half_precision(device, dtype):
    g = torch.Generator().manual_seed(10)
    h = torch.randn(2, 6, 9, 16, generator=g).to(device, dtype)
    hs = torch.randn(2, 4, 9, 16, generator=g).to(device, dtype)
    for version in (1, 2):
        out = fused_freeu_concat(h, hs, b=1.4, s=0.2, version=version)
        assert out.dtype == dtype
        expected = freeu_concat(h.float(), hs.float(), b=1.4, s=0.2, version=version)  # fp32 maths, unrounded
        close_to_reference(out.float(), expected, expected, rel=4e-3 if dtype == torch.float16 else 1.6e-2)
        # the version 1 backbone is one fp32 multiply rounded once, as in torch (Triton's interpreter truncates
        # fp32 -> bf16 instead of rounding, so that case is only checked on a GPU)
        if version == 1 and (dtype == torch.float16 or device == "cuda"):
            assert torch.equal(out[:, :3], h[:, :3] * 1.4)


@needs_triton
@pytest.mark.parametrize("device", DEVICES)
def test_kernel_guards_a_constant_map(device):
    h = torch.randn(2, 4, 1, 1).to(device)
    out = fused_freeu_concat(h, h, b=1.5, s=1.0, version=2)
    assert torch.equal(out[:, :4], h)


@needs_triton
def test_kernel_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same batch"):
        kernels.fused_decoder_input(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5), b=1.0, s=1.0)
    with pytest.raises(ValueError, match="same dtype"):
        kernels.fused_decoder_input(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.float64), b=1.0, s=1.0)


COMPILE_FOR_GPUS = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from minunet.kernels import freeu_triton as k

common = {"C": "i32", "CS": "i32", "H": "i32", "W": "i32", "b": "fp32", "keep": "fp32", "row1": "fp32",
          "col1": "fp32", "VERSION": "constexpr", "BLOCK_H": "constexpr", "BLOCK_W": "constexpr"}
for arch, version, t in [(80, 1, "fp16"), (90, 2, "bf16")]:
    sig = {"h": "*" + t, "hs": "*" + t, "weight": "*fp32" if version == 2 else "*" + t, "out": "*" + t, **common}
    constexprs = {"VERSION": version, "BLOCK_H": 8, "BLOCK_W": 64}
    src = ASTSource(fn=k._freeu_concat_kernel, signature=sig, constexprs=constexprs)
    print("cubin" in triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm)
sig = {"h": "*fp16", "mean": "*fp32", "C": "i32", "HW": "i32", "BLOCK": "constexpr"}
src = ASTSource(fn=k._channel_mean_kernel, signature=sig, constexprs={"BLOCK": 1024})
print("cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm)
"""


@needs_triton
def test_kernel_compiles_for_gpus():
    """No GPU needed: compile the kernels to sm_80 / sm_90 machine code (Triton ships ptxas), in a fresh process
    without TRITON_INTERPRET so that they are decorated for the GPU."""
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE_FOR_GPUS], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.split() == ["True"] * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not kernels.available() or kernels.interpreting(),
                    reason="needs CUDA and triton")
@torch.no_grad()
def test_unet_uses_kernel_on_cuda(monkeypatch):
    """The whole float32 UNet on CUDA (fused kernel) against the CPU (pure torch). TF32 off: cuDNN's convolutions
    default to TF32 on CUDA, which alone moved the output by 1.2e-3 of its largest value on an H200 (measured)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = CONFIGS["sd15-ratios"]
    ours = randomize_(UNet(cfg).eval(), seed=7)
    x, t, ctx, kw = unet_inputs(cfg)
    for version in (1, 2):
        ours.enable_freeu(FreeU(**FACTORS, version=version))
        expected = ours(x, t, ctx, **kw)
        gpu = ours.cuda()(x.cuda(), t.cuda(), ctx.cuda(), **{k: v.cuda() for k, v in kw.items()})
        ours.cpu()
        assert_close(gpu.cpu(), expected, rel=1e-4)
