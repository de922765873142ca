"""VAE parity with diffusers' AutoencoderKL (float32, random weights where every parameter matters), from every
layout load_vae reads; key-map coverage of the official manifests; tiling; sampling; fp16 upcast; errors."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import helpers
from helpers import meta_state_dict

from minunet.pipelines.images import from_pil, to_pil
from minunet.errors import CheckpointError
from minunet.keymaps import vae as keymap
from minunet.loading.vae import load_vae, vae_from_state_dict
from minunet.models.vae import SD, SDXL, VAE, VAEConfig
from minunet.loading.configs import to_diffusers, vae_config

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
# Small widths of the official structure (4 levels, 2 resnets per encoder level, mid attention). "sd" uses 8 groups
# (so single files need its config); "sdxl" uses 32 groups, as the full size, so its shapes alone configure it.
TINY = {
    "sd": VAEConfig(block_out_channels=(32, 32, 64, 64), norm_num_groups=8, sample_size=64),
    "sdxl": VAEConfig(block_out_channels=(32, 32, 64, 64), sample_size=64, scaling_factor=0.13025),
}
ERRORS = {}  # measured max relative errors, printed at the end (pytest -s)


def randomize_(module, seed):
    return helpers.randomize_(module, seed, qk_scale=3.0)  # q, k x3: attention far from uniform


def close(name, actual, expected, rtol=1e-5):
    """assert_close with a tolerance relative to the reference's scale; records the max relative error."""
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item() / scale
    ERRORS[name] = max(err, ERRORS.get(name, 0.0))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def teardown_module():
    for name, err in sorted(ERRORS.items()):
        print(f"max |err| / max |ref|  {name:40s} {err:.2e}")


class Case:
    """A tiny diffusers VAE saved in every layout, with its reference outputs."""

    def __init__(self, name, root):
        from diffusers import AutoencoderKL

        self.name, self.cfg, self.root = name, TINY[name], root
        self.ref = randomize_(AutoencoderKL(**to_diffusers(self.cfg)), seed=len(name)).eval()
        self.folder = root / "pipeline" / "vae"
        self.ref.save_pretrained(self.folder)
        g = torch.Generator().manual_seed(0)
        self.z = torch.randn(2, 4, 8, 12, generator=g)  # latents of a 64 x 96 image
        self.x = torch.rand(2, 3, 64, 96, generator=g) * 2 - 1
        with torch.no_grad():
            self.image = self.ref.decode(self.z).sample
            self.posterior = self.ref.encode(self.x).latent_dist
        self.sd = load_file(self.folder / "diffusion_pytorch_model.safetensors")
        n, layers = len(self.cfg.block_out_channels), self.cfg.layers_per_block
        self.original = keymap.diffusers_to_original(self.sd, n, layers)

    def write(self, name, sd):
        path = self.root / name
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
        return path

    def whole_checkpoint(self):
        """The VAE inside a whole checkpoint, with the other parts an official file of this family holds."""
        other = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3)}
        if self.name == "sdxl":
            other["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.randn(8)
        else:
            other.update({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.randn(8),
                          "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7),
                          "betas": torch.rand(1000), "alphas_cumprod": torch.rand(1000)})
        return {**{keymap.PREFIX + k: v for k, v in self.original.items()}, **other}

    def check(self, model, label):
        with torch.no_grad():
            close(f"{self.name} decode {label}", model.decode(self.z), self.image)
            post = model.encode(self.x)
        close(f"{self.name} encode mean {label}", post.mean, self.posterior.mean)
        close(f"{self.name} encode logvar {label}", post.logvar, self.posterior.logvar)


@pytest.fixture(scope="module", params=sorted(TINY))
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory.mktemp(request.param))


# -- configuration -------------------------------------------------------------------------------------------------

VAE_CONFIGS = sorted(p for p in WEIGHTS.glob("configs/**/config.json") if '"AutoencoderKL"' in p.read_text())


@pytest.mark.parametrize("path", VAE_CONFIGS, ids=lambda p: str(p.relative_to(WEIGHTS / "configs").parent))
def test_official_configs_translate(path):
    d = json.loads(path.read_text())
    cfg = vae_config(d)
    assert cfg.block_out_channels == tuple(d["block_out_channels"]) and cfg.latent_channels == 4
    assert cfg.scaling_factor == d.get("scaling_factor", 0.18215) and cfg.shift_factor is None
    assert cfg.force_upcast == d.get("force_upcast", True)  # diffusers' meaning of a missing field
    if "xl" in str(path):
        assert cfg.scaling_factor == SDXL.scaling_factor == 0.13025


def test_presets_and_roundtrip():
    sd15 = vae_config(json.loads((WEIGHTS / "configs/stable-diffusion-v1-5/vae/config.json").read_text()))
    assert sd15 == SD and SD.scaling_factor == 0.18215 and SD.downscale == 8
    sdxl = vae_config(json.loads((WEIGHTS / "configs/sdxl-vae/config.json").read_text()))
    assert sdxl == SDXL
    for cfg in TINY.values():
        assert vae_config(to_diffusers(cfg)) == cfg


@pytest.mark.parametrize("change, message", [
    ({"act_fn": "relu"}, "act_fn"),
    ({"mid_block_add_attention": False}, "mid_block_add_attention"),
    ({"up_block_types": ["AttnUpDecoderBlock2D"] * 4}, "up_block_types"),
    ({"latents_mean": [0.0] * 4}, "latents_mean"),
    ({"some_new_field": 1}, "some_new_field"),
    ({"_class_name": "AutoencoderTiny"}, "AutoencoderTiny"),
])
def test_unsupported_config_raises(change, message):
    d = {**json.loads((WEIGHTS / "configs/sdxl-vae/config.json").read_text()), **change}
    with pytest.raises(CheckpointError, match=message):
        vae_config(d)


# -- parity with diffusers from every layout -----------------------------------------------------------------------

def test_diffusers_folder(case):
    case.check(load_vae(case.folder), "folder")
    vae = load_vae(case.folder.parent)  # a pipeline folder: its vae/ is used
    assert vae.scaling_factor == case.cfg.scaling_factor and vae.shift_factor is None
    case.check(vae, "pipeline folder")


def test_legacy_attention_names(case):
    new_to_old = {v: k for k, v in keymap.LEGACY_ATTENTION.items()}
    legacy = {}
    for k, v in case.sd.items():
        for new, old in new_to_old.items():
            k = k.replace(f"mid_block.attentions.0.{new}.", f"mid_block.attentions.0.{old}.")
        legacy[k] = v
    assert sum(".query." in k for k in legacy) == 4  # encoder and decoder, weight and bias
    folder = case.root / "legacy"
    folder.mkdir()
    (folder / "config.json").write_text((case.folder / "config.json").read_text())
    save_file(legacy, folder / "diffusion_pytorch_model.safetensors")
    case.check(load_vae(folder), "legacy names")


@pytest.mark.parametrize("kind", ["whole", "standalone"])
def test_original_single_file(case, kind):
    from diffusers import AutoencoderKL

    sd = case.whole_checkpoint() if kind == "whole" else case.original
    path = case.write(f"{kind}.safetensors", sd)
    assert any(v.ndim == 4 and v.shape[2:] == (1, 1) for k, v in sd.items() if "attn_1.q." in k)
    case.check(load_vae(path, config=case.cfg), f"original {kind}")
    # the file is an independent check of the layout: diffusers' own converter reads it to the same model
    theirs = AutoencoderKL.from_single_file(str(path), config=str(case.folder), local_files_only=True)
    with torch.no_grad():
        close(f"{case.name} diffusers.from_single_file {kind}", theirs.decode(case.z).sample, case.image, rtol=1e-6)
    if case.name == "sdxl":  # 32 groups: the shapes alone configure it, scaling factor from the text encoders
        vae = load_vae(path)
        assert vae.config.block_out_channels == case.cfg.block_out_channels
        assert vae.scaling_factor == (0.13025 if kind == "whole" else 0.18215)
        case.check(vae, f"original {kind}, config from shapes")


def test_diffusers_layout_file_without_config(case):
    path = case.write("renamed.safetensors", case.sd)  # not named like a diffusers file: config from the shapes
    vae = load_vae(path, config=None if case.name == "sdxl" else case.cfg)
    case.check(vae, "diffusers file, no config.json")


# -- the official layouts, full size, on the meta device -----------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl", "sdxl-refiner"])
def test_official_single_file_manifests(family):
    """The whole checkpoint's keys: VAE mapped one-to-one onto the full-size model, everything else skipped."""
    names = [f"{family}_{part}.tsv" for part in ("unet", "vae", "text", "other")
             if (WEIGHTS / "manifests" / f"{family}_{part}.tsv").exists()]
    if family == "sd15":
        names.append("sd15_pruned_with_ema_model_ema.tsv")
    sd = meta_state_dict(*names)
    vae = vae_from_state_dict(sd, source=family)  # strict: no key unmapped, none left over, shapes equal
    assert vae.config == (SDXL if family.startswith("sdxl") else SD)
    assert len(vae.state_dict()) == sum(k.startswith(keymap.PREFIX) for k in sd) == 248


@pytest.mark.parametrize("name", sorted(p.name for p in (WEIGHTS / "manifests/diffusers").glob("*_vae*.tsv")))
def test_official_diffusers_manifests(name):
    vae = vae_from_state_dict(meta_state_dict("diffusers/" + name), source=name)
    assert vae.config == SD and len(vae.state_dict()) == 248


# -- tiling, sampling, numerics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tile, overlap", [(32, 0.25), (48, 0.5)])
def test_tiled_decode_and_encode(case, tile, overlap):
    vae = load_vae(case.folder)
    ref = case.ref
    ref.enable_tiling()
    ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = tile, tile // 8, overlap
    try:
        with torch.no_grad():
            expected = ref.decode(case.z).sample
            expected_post = ref.encode(case.x).latent_dist
            image = vae.decode(case.z, tiled=True, tile_size=tile, overlap=overlap)
            post = vae.encode(case.x, tiled=True, tile_size=tile, overlap=overlap)
    finally:
        ref.disable_tiling()
    assert (expected - case.image).abs().max() > 1e-3  # tiles really were used
    close(f"{case.name} tiled decode {tile}/{overlap}", image, expected)
    close(f"{case.name} tiled encode mean {tile}/{overlap}", post.mean, expected_post.mean)
    close(f"{case.name} tiled encode logvar {tile}/{overlap}", post.logvar, expected_post.logvar)
    with torch.no_grad():  # an image no larger than one tile is not tiled
        close(f"{case.name} tiled, one tile", vae.decode(case.z, tiled=True, tile_size=96), case.image)


def test_sample_matches_diffusers(case):
    vae = load_vae(case.folder)
    with torch.no_grad():
        post = vae.encode(case.x)
    close(f"{case.name} std", post.std, case.posterior.std)
    for gen in (lambda: torch.Generator().manual_seed(3),
                lambda: [torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)]):
        close(f"{case.name} sample", post.sample(gen()), case.posterior.sample(gen()))
    assert post.mode() is post.mean
    assert not torch.equal(post.sample(torch.Generator().manual_seed(3)), post.mean)


def test_logvar_is_clamped():
    from minunet.models.vae import DiagonalGaussian

    moments = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 2, 2, 2), 50.0), torch.full((1, 2, 2, 2), -50.0)], 1)
    post = DiagonalGaussian(moments)
    assert post.logvar[:, :2].eq(20).all() and post.logvar[:, 2:].eq(-30).all()


def fp16_and_fp32_twin(case, force_upcast):
    """The tiny VAE in float16, and a float32 copy of its (fp16-rounded) weights to compare against."""
    import dataclasses

    cfg = dataclasses.replace(case.cfg, force_upcast=force_upcast)
    half = load_vae(case.folder, config=cfg, dtype=torch.float16)
    full = vae_from_state_dict({k: v.float() for k, v in half.state_dict().items()}, config=cfg)
    return half, full


def test_fp16_force_upcast_decodes_in_float32(case):
    half, full = fp16_and_fp32_twin(case, force_upcast=True)
    before = {k: v.clone() for k, v in half.state_dict().items()}
    with torch.no_grad():
        image = half.decode(case.z[:1].half())
        post = half.encode(case.x[:1].half())
    assert image.dtype == torch.float32 and post.mean.dtype == torch.float32
    with torch.no_grad():
        close(f"{case.name} fp16 force_upcast decode", image, full.decode(case.z[:1].half().float()))
        close(f"{case.name} fp16 force_upcast encode", post.mean, full.encode(case.x[:1].half().float()).mean)
    assert all(v.dtype == torch.float16 and torch.equal(v, before[k]) for k, v in half.state_dict().items())


def test_fp16_overflow_is_redone_in_float32(case):
    half, full = fp16_and_fp32_twin(case, force_upcast=False)
    z = case.z[:1, :, :4, :6] * 3e4  # conv_in activations pass float16's 65504
    with torch.no_grad():
        assert not torch.isfinite(half._decode_tile(z.half())).all()  # the plain float16 decode overflows
        image = half.decode(z)
        close(f"{case.name} fp16 overflow redone", image, full.decode(z))
        assert half.decode(case.z[:1, :, :4, :6]).dtype == torch.float16  # no overflow: stays in float16


# -- images --------------------------------------------------------------------------------------------------------

def test_pil_roundtrip_matches_diffusers():
    from diffusers.image_processor import VaeImageProcessor

    x = torch.randn(2, 3, 16, 24) * 0.7  # some values beyond [-1, 1], to check the clamp
    ours, theirs = to_pil(x), VaeImageProcessor().postprocess(x, output_type="pil")
    assert all(a.tobytes() == b.tobytes() and a.size == (24, 16) for a, b in zip(ours, theirs))
    back = from_pil(ours)
    torch.testing.assert_close(back, VaeImageProcessor().preprocess(ours, height=16, width=24))
    assert back.shape == (2, 3, 16, 24) and (back - x.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-6


# -- errors --------------------------------------------------------------------------------------------------------

def test_truncated_file(case):
    path = case.write("trunc.safetensors", case.sd)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(path, config=case.cfg)


def test_not_safetensors_and_pickle(tmp_path):
    path = tmp_path / "vae.safetensors"
    path.write_bytes(b"PK\x03\x04 this is a zip archive, not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_vae(path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_vae(tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt")
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors"):
        load_vae(tmp_path)


def test_missing_unexpected_and_misshapen_keys(case):
    sd = dict(case.sd)
    del sd["decoder.up_blocks.1.resnets.2.norm2.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing keys: decoder\.up_blocks\.1\.resnets\.2\.norm2\.bias"):
        load_vae(case.write("missing.safetensors", sd), config=case.cfg)
    sd = {**case.sd, "decoder.mid_block.extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: decoder\.mid_block\.extra\.weight"):
        load_vae(case.write("unexpected.safetensors", sd), config=case.cfg)
    sd = {**case.sd, "decoder.conv_out.weight": torch.zeros(3, 32, 1, 1)}
    with pytest.raises(CheckpointError, match=r"wrong shape for 'decoder\.conv_out\.weight': "
                                              r"expected \[3, 32, 3, 3\], found \[3, 32, 1, 1\]"):
        load_vae(case.write("shape.safetensors", sd), config=case.cfg)


def test_unknown_keys_in_original_layout(case):
    sd = {**case.whole_checkpoint(), "first_stage_model.decoder.up.0.attn.0.q.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match=r"1 original-layout keys have no place in the VAE: decoder\.up\.0\.attn"):
        load_vae(case.write("unknown_vae_key.safetensors", sd), config=case.cfg)
    sd = {**case.whole_checkpoint(), "denoiser.sigmas": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"1 keys belong to no known part .*denoiser\.sigmas"):
        load_vae(case.write("unknown_key.safetensors", sd), config=case.cfg)
    unet_only = {"model.diffusion_model.out.2.bias": torch.zeros(4)}
    with pytest.raises(CheckpointError, match="without a VAE"):
        load_vae(case.write("unet_only.safetensors", unet_only))


def test_hub_id_offline_names_the_way_out(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="stabilityai/sdxl-vae.*local path"):
        load_vae("stabilityai/sdxl-vae")


def test_model_names_are_diffusers(case):
    """Same state-dict keys and shapes as diffusers, so a diffusers file loads strictly with no renaming."""
    with torch.device("meta"):
        ours = VAE(case.cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in case.ref.state_dict().items()}


def test_without_quant_convs_and_with_shift_factor(tmp_path):
    """The config fields beyond SD / SDXL that are implemented (SD3-like: 16 channels, shift, no quant convs)."""
    from diffusers import AutoencoderKL

    cfg = VAEConfig(block_out_channels=(32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=8,
                    scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    ref = randomize_(AutoencoderKL(**to_diffusers(cfg)), seed=5).eval()
    ref.save_pretrained(tmp_path)
    vae = load_vae(tmp_path)
    assert vae.config == cfg and vae.quant_conv is None and vae.shift_factor == 0.0609
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(1, 16, 6, 10, generator=g), torch.rand(1, 3, 12, 20, generator=g) * 2 - 1
    with torch.no_grad():
        close("sd3-like decode", vae.decode(z), ref.decode(z).sample)
        close("sd3-like encode mean", vae.encode(x).mean, ref.encode(x).latent_dist.mean)


def test_bad_tiling_arguments(case):
    vae = load_vae(case.folder)
    with pytest.raises(ValueError, match="overlap"):
        vae.decode(case.z, tiled=True, tile_size=32, overlap=1.0)


def test_mid_block_attention_never_holds_the_score_matrix():
    """The VAE's one-head attention over H*W positions runs in memory linear in H*W: at 64 x 64 positions the
    (4096 x 4096) float32 score matrix alone would be 64 MiB; the peak of the bytes torch holds during the call
    (the profiler's allocation events) stays under 8 MiB. Same result as the plain softmax(q k^T / sqrt(C)) v."""
    from torch.profiler import ProfilerActivity, profile

    from minunet.blocks.vae_blocks import VAEAttention

    torch.manual_seed(0)
    attn = VAEAttention(32, 8).eval()
    x = torch.randn(1, 32, 64, 64)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = attn(x)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB: the attention held a score matrix"
    with torch.no_grad():
        h = attn.group_norm(x).flatten(2).transpose(1, 2)
        q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
        ref = torch.softmax(q @ k.transpose(1, 2) / 32 ** 0.5, dim=-1) @ v
        ref = x + attn.to_out[0](ref).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
