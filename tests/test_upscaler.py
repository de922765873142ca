"""The x2 latent upscaler's K-UNet: parity with diffusers' UNet2DConditionModel (K blocks) on tiny random widths of
the real structure, the full-size tensors against the official manifest, the config translator, loading."""
import inspect
import json

import pytest
import torch

from helpers import assert_close, manifest_shapes, randomize_
from minunet import load_unet
from minunet.errors import CheckpointError
from minunet.freeu import FreeU
from minunet.models.kunet import SD_X2_LATENT_UPSCALER, KUNet, KUNetConfig
from minunet.loading.configs import kunet_config, to_diffusers

# the real structure at tiny widths: level widths (C, C, 2C, 2C), temb 2C, head size 16, 2 resnets per block
TINY_K = KUNetConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=2, head_size=16, context_dim=32,
                     time_cond_dim=2 * 64 + 32)


def k_inputs(cfg, batch=2, h=16, w=24, seed=1):
    """Batch 2, non-square latents, one t = log(sigma) / 4 per sample, random text and timestep_cond."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, h, w, generator=g)
    t = torch.tensor([0.67, -0.88])[:batch]  # log(14.6) / 4 and log(0.03) / 4: the ends of the schedule
    ctx = torch.randn(batch, 77, cfg.context_dim, generator=g)
    cond = torch.randn(batch, cfg.time_cond_dim, generator=g)
    return x, t, ctx, cond


def diffusers_kunet(cfg, state=None):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**to_diffusers(cfg)).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def pair():
    ours = randomize_(KUNet(TINY_K).eval(), seed=3)
    return ours, diffusers_kunet(TINY_K, ours.state_dict())


@torch.no_grad()
def test_forward_matches_diffusers(pair):
    ours, ref = pair
    x, t, ctx, cond = k_inputs(TINY_K)
    assert_close(ours(x, t, ctx, timestep_cond=cond), ref(x, t, ctx, timestep_cond=cond).sample)
    # a scalar t (0-d tensor, as the pipeline passes it) is broadcast over the batch
    t0 = torch.tensor(-0.3)
    assert_close(ours(x, t0, ctx, timestep_cond=cond), ref(x, t0, ctx, timestep_cond=cond).sample)


@torch.no_grad()
def test_each_block_matches_diffusers(pair):
    """Every top-level block's output, and each down block's skip, in both models: a mismatch is located."""
    ours, ref = pair
    outputs = {}

    def hook(tag):
        def f(module, args, out):
            outputs[tag] = out
        return f

    n = len(TINY_K.block_out_channels)
    tags = ["conv_in", "time_proj", "time_embedding", "conv_out"] + [f"down_blocks.{i}" for i in range(n)] + \
        [f"up_blocks.{i}" for i in range(n)]
    handles = [m.get_submodule(tag).register_forward_hook(hook((side, tag)))
               for side, m in (("ours", ours), ("ref", ref)) for tag in tags]
    x, t, ctx, cond = k_inputs(TINY_K)
    ours(x, t, ctx, timestep_cond=cond)
    ref(x, t, ctx, timestep_cond=cond)
    for h in handles:
        h.remove()
    for tag in tags:
        mine, theirs = outputs["ours", tag], outputs["ref", tag]
        if tag.startswith("down_blocks"):  # (h, skip) vs (h, per-resnet outputs): the skip is the last one
            (mine, skip), (theirs, states) = mine, theirs
            assert (skip is None) == (states[-1] is None), tag
            if skip is not None:
                assert_close(skip, states[-1], msg=tag + " skip")
        assert_close(mine, theirs, msg=tag)


def test_full_size_has_exactly_the_manifest_tensors():
    with torch.device("meta"):
        model = KUNet(SD_X2_LATENT_UPSCALER)
    expected = manifest_shapes("diffusers/sd-x2-latent-upscaler_unet.tsv")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == 372_560_645  # the published fp32 file's size / 4


def test_official_config_translates_and_unknown_keys_are_errors(request):
    path = request.config.rootpath / "weights" / "configs" / "sd-x2-latent-upscaler" / "unet" / "config.json"
    cfg = json.loads(path.read_text())
    assert kunet_config(cfg) == SD_X2_LATENT_UPSCALER
    # the old revision's spelling: diffusers ignores it (and the final GELU goes missing); we name it
    old = {k: v for k, v in cfg.items() if k != "timestep_post_act"} | {"timestep_act_2": "gelu"}
    with pytest.raises(ValueError, match=r"config\.json.*unknown field 'timestep_act_2' = 'gelu'.*'timestep_post_act'"
                                         r" = None \(diffusers' default, not in the file\)"):
        kunet_config(old, source="config.json")
    with pytest.raises(ValueError, match=r"'mid_block_type' = 'UNetMidBlock2DCrossAttn'"):
        kunet_config({**cfg, "mid_block_type": "UNetMidBlock2DCrossAttn"})
    with pytest.raises(ValueError, match=r"block types"):
        kunet_config({**cfg, "up_block_types": cfg["up_block_types"][::-1]})
    with pytest.raises(ValueError, match="last two widths must both be 2 x the first"):
        KUNetConfig(block_out_channels=(32, 64, 64, 128))


def test_translator_defaults_are_diffusers_defaults():
    """A key missing from config.json means diffusers' default: the table the translator checks them with must
    hold diffusers' real defaults."""
    from diffusers import UNet2DConditionModel

    from minunet.loading.configs import KUNET

    params = inspect.signature(UNet2DConditionModel.__init__).parameters
    for key, (_, default) in KUNET.fixed.items():
        assert params[key].default == default, key
    assert UNet2DConditionModel(**to_diffusers(TINY_K)).config.timestep_post_act == "gelu"


def test_load_unet_reads_the_diffusers_folder(pair, tmp_path):
    ours, ref = pair
    ref.save_pretrained(tmp_path / "unet")  # config.json + diffusion_pytorch_model.safetensors, diffusers' writer
    loaded = load_unet(tmp_path)
    assert isinstance(loaded, KUNet) and loaded.config == TINY_K
    x, t, ctx, cond = k_inputs(TINY_K)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, ctx, timestep_cond=cond), ours(x, t, ctx, timestep_cond=cond),
                                   rtol=0, atol=0)
    import safetensors.torch as st

    file = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = st.load_file(file)
    st.save_file({k: v for k, v in state.items() if k != "time_proj.weight"}, file)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*1 missing keys: time_proj\.weight"):
        load_unet(tmp_path / "unet")


@pytest.mark.parametrize("h, w", [(20, 24), (16, 12), (8, 16)])
def test_sizes_the_fixed_kernels_cannot_take(pair, h, w):
    ours, _ = pair
    x, t, ctx, cond = k_inputs(TINY_K, h=h, w=w)
    with pytest.raises(ValueError, match=rf"K-UNet input {h}x{w}.*multiples of 8 and at least 16"):
        ours(x, t, ctx, timestep_cond=cond)


def test_bad_conditioning_shapes(pair):
    ours, _ = pair
    x, t, ctx, cond = k_inputs(TINY_K)
    with pytest.raises(ValueError, match=r"timestep_cond has shape \(2, 159\), expected \(2, 160\)"):
        ours(x, t, ctx, timestep_cond=cond[:, 1:])
    with pytest.raises(ValueError, match="t has 3 values for a batch of 2"):
        ours(x, torch.zeros(3), ctx, timestep_cond=cond)


# ---- FreeU: minunet's own definition on this model (diffusers' enable_freeu is a silent no-op here) ----

FACTORS = dict(s1=0.9, s2=0.2, b1=1.3, b2=1.4)


@torch.no_grad()
def test_freeu_changes_ours_not_diffusers_and_disabling_restores(pair):
    ours, ref = pair
    x, t, ctx, cond = k_inputs(TINY_K)
    plain = ours(x, t, ctx, timestep_cond=cond)
    ours.enable_freeu(FreeU(**FACTORS))
    try:
        changed = ours(x, t, ctx, timestep_cond=cond)
    finally:
        ours.disable_freeu()
    assert (changed - plain).abs().max() > 1e-2 * plain.abs().max()
    torch.testing.assert_close(ours(x, t, ctx, timestep_cond=cond), plain, rtol=0, atol=0)
    # diffusers: the factors are set on every up block and read by none (the README's claim, kept checked)
    theirs = ref(x, t, ctx, timestep_cond=cond).sample
    ref.enable_freeu(**FACTORS)
    try:
        assert all(getattr(b, "b1", None) == 1.3 for b in ref.up_blocks)
        torch.testing.assert_close(ref(x, t, ctx, timestep_cond=cond).sample, theirs, rtol=0, atol=0)
    finally:
        ref.disable_freeu()


@torch.no_grad()
def test_freeu_acts_at_up_blocks_1_and_2_only(pair):
    """The first resnet of up block 1 gets FreeU's stage-1 input, up block 2's the stage-2 input, up block 3's
    the plain concatenation (each against the very (backbone, skip) pair its block received)."""
    from minunet.blocks.freeu import Stage, freeu_concat

    ours, _ = pair
    got = {}
    hooks = [ours.up_blocks[i].register_forward_pre_hook(lambda m, a, i=i: got.__setitem__(("block", i), a[:2]))
             for i in range(4)]
    hooks += [ours.up_blocks[i].resnets[0].register_forward_pre_hook(
        lambda m, a, i=i: got.__setitem__(("resnet", i), a[0])) for i in range(4)]
    ours.enable_freeu(FreeU(**FACTORS, version=2))
    try:
        assert ours.freeu_plan == [None, Stage(1.3, 0.9, 2), Stage(1.4, 0.2, 2), None]
        ours(*k_inputs(TINY_K)[:3], timestep_cond=k_inputs(TINY_K)[3])
    finally:
        ours.disable_freeu()
        for h in hooks:
            h.remove()
    assert got["block", 0][1] is None  # up block 0 concatenates nothing
    for i, (b, s) in ((1, (1.3, 0.9)), (2, (1.4, 0.2))):
        h, skip = got["block", i]
        torch.testing.assert_close(got["resnet", i], freeu_concat(h, skip, b=b, s=s, version=2), rtol=0, atol=0)
    torch.testing.assert_close(got["resnet", 3], torch.cat(got["block", 3], dim=1), rtol=0, atol=0)


def test_freeu_diffusers_mapping_is_an_error(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="diffusers' enable_freeu does nothing on this model"):
        ours.enable_freeu(FreeU(**FACTORS, mapping="diffusers"))
    assert ours.freeu is None and ours.freeu_plan is None
