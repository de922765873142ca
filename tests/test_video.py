"""The video UNet against diffusers' UNet3DConditionModel on tiny random widths of the ModelScope structure
(every parameter random, the temporal convs' zero-initialised last layer included; batch 2, F = 3 frames, a
non-square latent whose sizes halve to odd numbers), FreeU in its decoder, and loading."""
import json

import pytest
import safetensors.torch as st
import torch

from helpers import assert_close, manifest_shapes, randomize_
from minunet import CheckpointError, FreeU, load_unet
from minunet.loading.video import original_state_dict
from minunet.models.video import MS_1_7B, VideoUNet, VideoUNetConfig
from minunet.weights import CONFIGS
from minunet.loading.configs import to_diffusers, video_config

# the real ratios (widths 1:2:4:4, attention at the first three levels, 32 groups, 8-head transformer_in)
TINY = VideoUNetConfig(block_out_channels=(32, 64, 128, 128), head_size=16, context_dim=48)
FRAMES = 3


def inputs(cfg=TINY, batch=2, h=12, w=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, FRAMES, h, w, generator=g)
    return x, torch.tensor([999.0, 17.0])[:batch], torch.randn(batch, 7, cfg.context_dim, generator=g)


def diffusers_video_unet(cfg, state_dict):
    from diffusers import UNet3DConditionModel

    model = UNet3DConditionModel(**to_diffusers(cfg)).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def pair():
    ours = randomize_(VideoUNet(TINY).eval(), seed=3)
    return ours, diffusers_video_unet(TINY, ours.state_dict())


def test_temporal_convs_are_not_identities(pair):
    """diffusers zero-initialises conv4 of every TemporalConvLayer; the random model must not."""
    ours, _ = pair
    for name, p in ours.named_parameters():
        if ".conv4.3." in name:
            assert p.abs().min() > 0, name


@torch.no_grad()
def test_forward_matches_diffusers(pair):
    ours, ref = pair
    x, t, ctx = inputs()
    out = ours(x, t, ctx)
    assert out.shape == x.shape
    assert_close(out, ref(x, t, ctx).sample)
    assert_close(ours(x, 17.0, ctx), ref(x, 17.0, ctx).sample)  # a scalar timestep is broadcast


@torch.no_grad()
def test_each_block_matches_diffusers(pair):
    ours, ref = pair
    outputs = {}

    def hook(tag):
        def f(module, args, out):
            outputs[tag] = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        return f

    n = len(TINY.block_out_channels)
    tags = ["conv_in", "time_embedding", "transformer_in", "mid_block", "conv_out",
            "down_blocks.0.temp_convs.0", "down_blocks.1.temp_attentions.1", "up_blocks.3.temp_attentions.2",
            *[f"down_blocks.{i}" for i in range(n)], *[f"up_blocks.{i}" for i in range(n)]]
    handles = [m.get_submodule(tag).register_forward_hook(hook((side, tag)))
               for tag in tags for side, m in (("ours", ours), ("ref", ref))]
    try:
        x, t, ctx = inputs()
        ours(x, t, ctx)
        ref(x, t, ctx)
    finally:
        for h in handles:
            h.remove()
    for tag in tags:
        assert_close(outputs["ours", tag], outputs["ref", tag], msg=tag)


@torch.no_grad()
def test_frames_interact(pair):
    """Changing the last frame's input changes the first frame's output (temporal layers mix frames) and a batch
    element never sees another's frames."""
    ours, _ = pair
    x, t, ctx = inputs()
    y = x.clone()
    y[0, :, -1] += 1.0
    a, b = ours(x, t, ctx), ours(y, t, ctx)
    assert (a[0, :, 0] - b[0, :, 0]).abs().max() > 1e-3
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------- FreeU

def fft_filter(x, s):
    """FreeU's Fourier filter as its definition: scale the centred 2 x 2 block of the shifted spectrum by s."""
    X = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=(-2, -1)), dim=(-2, -1))
    H, W = x.shape[-2:]
    mask = torch.ones(H, W, dtype=torch.float64)
    mask[max(H // 2 - 1, 0):H // 2 + 1, max(W // 2 - 1, 0):W // 2 + 1] = s
    y = torch.fft.ifftn(torch.fft.ifftshift(X * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return y.to(x.dtype)


def official_video_rule(cfg):
    """The official video port's table (notes): backbone width 4 x C0 -> stage 1, 2 x C0 -> stage 2, else none;
    the backbone entering resnet j of up block i is the block below's width for j = 0, the block's own after."""
    chans = cfg.block_out_channels[::-1]
    c0 = cfg.block_out_channels[0]
    rule = {}
    for i in range(len(chans)):
        for j in range(cfg.layers_per_block + 1):
            backbone = chans[max(i - 1, 0)] if j == 0 else chans[i]
            rule[i, j] = {4 * c0: 1, 2 * c0: 2}.get(backbone)
    return rule


def reference_freeu(model, freeu, rule):
    """Pre-hooks on the up-block resnets that rewrite their input cat([h, hs]) as FreeU defines it."""
    handles = []
    for (i, j), stage in rule.items():
        if stage is None:
            continue
        b, s = (freeu.b1, freeu.s1) if stage == 1 else (freeu.b2, freeu.s2)
        resnet = model.up_blocks[i].resnets[j]
        backbone = model.config.block_out_channels[::-1][max(i - 1, 0) if j == 0 else i]

        def pre(module, args, b=b, s=s, c=backbone):
            x, temb = args
            h, hs = x[:, :c], x[:, c:]
            if freeu.version == 1:
                factor = b
            else:  # per image (each frame of each sample): 1 + (b - 1) * min-max normalised channel mean
                m = h.mean(1, keepdim=True)
                lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
                factor = 1 + (b - 1) * (m - lo) / (hi - lo)
            return torch.cat([h[:, :c // 2] * factor, h[:, c // 2:], fft_filter(hs, s)], 1), temb
        handles.append(resnet.register_forward_pre_hook(pre))
    return handles


@torch.no_grad()
def test_freeu_diffusers_mapping_matches_diffusers_enable_freeu(pair):
    ours, ref = pair
    x, t, ctx = inputs()
    ref.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    try:
        expected = ref(x, t, ctx).sample
    finally:
        ref.disable_freeu()
    ours.enable_freeu(FreeU.from_arguments(0.9, 0.2, 1.2, 1.4, mapping="diffusers"))
    try:
        assert_close(ours(x, t, ctx), expected)
    finally:
        ours.disable_freeu()
    assert (expected - ref(x, t, ctx).sample).abs().max() > 1e-3  # FreeU changed diffusers' output


@pytest.mark.parametrize("version", [1, 2])
@torch.no_grad()
def test_freeu_official_mapping_matches_reference(pair, version):
    ours, _ = pair
    freeu = FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2, version=version)  # the "video" preset's factors
    rule = official_video_rule(TINY)
    assert [k for k, v in rule.items() if v == 1] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert [k for k, v in rule.items() if v == 2] == [(2, 1), (2, 2), (3, 0)]   # the notes' table
    x, t, ctx = inputs()
    handles = reference_freeu(ours, freeu, rule)
    try:
        expected = ours(x, t, ctx)
    finally:
        for h in handles:
            h.remove()
    ours.enable_freeu(freeu)
    try:
        assert_close(ours(x, t, ctx), expected)
    finally:
        ours.disable_freeu()
    assert (expected - ours(x, t, ctx)).abs().max() > 1e-3


def test_full_size_plans_are_the_notes_table():
    """ms-1.7b geometry: which decoder resnets get stage 1 / 2 under each mapping (../notes/video.md's table)."""
    with torch.device("meta"):
        model = VideoUNet(MS_1_7B)
    assert model.decoder_widths() == [[1280] * 3, [1280] * 3, [1280, 640, 640], [640, 320, 320]]

    def stages(freeu):
        model.enable_freeu(freeu)
        return [[None if st is None else (st.b, st.s) for st in block] for block in model.freeu_plan]
    one, two = (1.2, 0.9), (1.4, 0.2)
    assert stages(FreeU.preset("video")) == [[one] * 3, [one] * 3, [one, two, two], [two, None, None]]
    diffusers = FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2, mapping="diffusers")
    assert stages(diffusers) == [[one] * 3, [two] * 3, [None] * 3, [None] * 3]
    model.disable_freeu()
    assert model.freeu is None and model.freeu_plan is None


def test_video_preset():
    f = FreeU.preset("video")
    assert (f.b1, f.b2, f.s1, f.s2, f.mapping) == (1.2, 1.4, 0.9, 0.2, "official")


# -------------------------------------------------------------------------------------------------------- loading

def test_config_translator():
    raw = json.loads((CONFIGS / "text-to-video-ms-1.7b" / "unet" / "config.json").read_text())
    assert video_config(raw) == MS_1_7B
    assert video_config(to_diffusers(MS_1_7B)) == MS_1_7B
    with pytest.raises(ValueError, match="unknown field 'wobble'"):
        video_config({**raw, "wobble": 1})
    with pytest.raises(ValueError, match="'num_attention_heads' = 8"):
        video_config({**raw, "num_attention_heads": 8})
    with pytest.raises(ValueError, match="attention_head_dim"):
        video_config({**raw, "attention_head_dim": [64, 64, 64, 64]})
    with pytest.raises(ValueError, match="do not mirror"):
        video_config({**raw, "up_block_types": ["CrossAttnUpBlock3D"] * 4})


def test_full_size_model_has_exactly_the_manifest():
    manifest = manifest_shapes("diffusers/text-to-video-ms-1.7b_unet.tsv")
    assert len(manifest) == 1480
    with torch.device("meta"):
        model = VideoUNet(MS_1_7B)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(manifest), set(ours) ^ set(manifest)
    assert ours == manifest
    assert sum(v.numel() for v in model.state_dict().values()) == 1_411_233_860   # the published parameter count


def test_full_size_original_layout_names():
    """The ModelScope names of the full-size model: the places where its layout differs from the image UNet's."""
    with torch.device("meta"):
        state = original_state_dict(VideoUNet(MS_1_7B))
    assert len(state) == 1480
    for key, shape in [("input_blocks.0.1.proj_in.weight", [512, 320, 1]), ("input_blocks.3.op.weight", None),
                       ("input_blocks.1.0.temopral_conv.conv4.3.weight", [320, 320, 3, 1, 1]),
                       ("input_blocks.1.2.proj_out.weight", [320, 320, 1]),
                       ("input_blocks.10.0.in_layers.0.weight", None),
                       ("middle_block.3.temopral_conv.conv1.0.weight", None), ("middle_block.2.norm.weight", None),
                       ("output_blocks.2.1.conv.weight", None), ("output_blocks.5.3.conv.weight", None),
                       ("output_blocks.11.1.proj_in.weight", [320, 320]), ("out.2.weight", [4, 320, 3, 3])]:
        assert key in state, key
        if shape is not None:
            assert list(state[key].shape) == shape, key
    assert not any("temp_convs" in k or "temp_attentions" in k for k in state)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_original_layout_round_trip(pair, tmp_path, prefix):
    ours, _ = pair
    path = tmp_path / "text2video.safetensors"
    state = {k: v.contiguous() for k, v in original_state_dict(ours, prefix).items()}
    if prefix:
        state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)  # another component: skipped
    st.save_file(state, path)
    loaded = load_unet(path)
    assert isinstance(loaded, VideoUNet) and loaded.config == TINY
    x, t, ctx = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, ctx), ours(x, t, ctx), rtol=0, atol=0)


def test_original_layout_unknown_key_is_an_error(pair, tmp_path):
    ours, _ = pair
    state = {k: v.contiguous() for k, v in original_state_dict(ours).items()}
    state["input_blocks.1.0.temopral_conv.conv9.0.weight"] = torch.ones(3)
    st.save_file(state, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match=r"odd.safetensors: 1 unknown video UNet keys.*conv9"):
        load_unet(tmp_path / "odd.safetensors")


def test_diffusers_folder_and_variant(pair, tmp_path):
    ours, ref = pair
    ref.save_pretrained(tmp_path / "model" / "unet")
    ref.half().save_pretrained(tmp_path / "model" / "unet", variant="fp16")
    ref.float()
    x, t, ctx = inputs()
    for source in (tmp_path / "model", tmp_path / "model" / "unet"):
        loaded = load_unet(source)
        assert isinstance(loaded, VideoUNet) and loaded.config == TINY
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, t, ctx), ours(x, t, ctx), rtol=0, atol=0)
    half = load_unet(tmp_path / "model", variant="fp16")
    assert isinstance(half, VideoUNet) and half.dtype == torch.float16
