"""UNet parity with diffusers' UNet2DConditionModel on tiny widths of every official structure, and loading."""
import json
import zlib

import pytest
import safetensors.torch as st
import torch

from helpers import TINY, assert_close, diffusers_kwargs, diffusers_unet, manifest_shapes, randomize_, unet_inputs
from minunet import UNet, UNetConfig, load_unet, original_state_dict
from minunet.errors import CheckpointError
from minunet.cli.parity import block_names, capture_blocks, format_rows
from minunet.loading.configs import to_diffusers, unet_config


@pytest.fixture(scope="module", params=list(TINY))
def pair(request):
    """(name, config, minunet model, diffusers model with the same random weights)."""
    cfg = TINY[request.param]
    ours = randomize_(UNet(cfg).eval(), seed=zlib.crc32(request.param.encode()) % 1000)  # same seed in every process
    return request.param, cfg, ours, diffusers_unet(ours)


@torch.no_grad()
def test_forward_matches_diffusers(pair):
    name, cfg, ours, ref = pair
    x, t, ctx, kw = unet_inputs(cfg)
    expected = ref(x, t, ctx, **diffusers_kwargs(kw)).sample
    assert_close(ours(x, t, ctx, **kw), expected)
    # a scalar timestep is broadcast over the batch
    assert_close(ours(x, 17.0, ctx, **kw), ref(x, 17.0, ctx, **diffusers_kwargs(kw)).sample)


@torch.no_grad()
def test_each_block_matches_diffusers(pair):
    """Every top-level block's output in both models, through minunet.cli.parity (the `parity` command's code), in
    forward order: the per-block table is printed, and the first mismatching block is the one reported."""
    name, cfg, ours, ref = pair
    x, t, ctx, kw = unet_inputs(cfg)
    blocks = capture_blocks(ours, ref, x, t, ctx, kw)
    print(format_rows([(tag, float((a - b).abs().max()), float(b.abs().max())) for tag, a, b in blocks]))
    assert [tag for tag, _, _ in blocks] == block_names(cfg) and len(blocks) == 4 + 2 * len(cfg.block_out_channels)
    for tag, a, b in blocks:
        assert_close(a, b, msg=tag)
    assert not any(m._forward_hooks for m in (*ours.modules(), *ref.modules()))  # hooks removed


def test_single_file_round_trip(pair, tmp_path):
    """Written in the original layout (with the other components and EMA/schedule entries a real file has),
    the model loads back through the key map, and diffusers' from_single_file reads the same file equally."""
    name, cfg, ours, ref = pair
    state = {k: v.contiguous() for k, v in original_state_dict(ours).items()}
    extras = {"first_stage_model.decoder.conv_in.weight": torch.zeros(2, 2), "model_ema.decay": torch.tensor(0.9999),
              "betas": torch.zeros(1000), "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(4)}
    path = tmp_path / "model.safetensors"
    st.save_file({**state, **extras}, path)
    loaded = load_unet(path)
    assert loaded.config == cfg
    x, t, ctx, kw = unet_inputs(cfg)
    with torch.no_grad():
        expected = ours(x, t, ctx, **kw)
        torch.testing.assert_close(loaded(x, t, ctx, **kw), expected, rtol=0, atol=0)

    from diffusers import UNet2DConditionModel
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(to_diffusers(cfg)))
    st.save_file(state, tmp_path / "unet_only.safetensors")
    theirs = UNet2DConditionModel.from_single_file(str(tmp_path / "unet_only.safetensors"), config=str(tmp_path),
                                                   subfolder="unet", local_files_only=True).eval()
    with torch.no_grad():
        assert_close(theirs(x, t, ctx, **diffusers_kwargs(kw)).sample, expected)


def test_diffusers_folder_and_variant(tmp_path):
    cfg = TINY["sd15"]
    ours = randomize_(UNet(cfg).eval())
    ref = diffusers_unet(ours)
    ref.save_pretrained(tmp_path / "model" / "unet")
    ref.half().save_pretrained(tmp_path / "model" / "unet", variant="fp16")
    x, t, ctx, _ = unet_inputs(cfg)
    for source in (tmp_path / "model", tmp_path / "model" / "unet"):
        loaded = load_unet(source)
        assert loaded.config == cfg and loaded.dtype == torch.float32
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, t, ctx), ours(x, t, ctx), rtol=0, atol=0)
    half = load_unet(tmp_path / "model", variant="fp16")
    assert half.dtype == torch.float16
    as_float = load_unet(tmp_path / "model", variant="fp16", dtype=torch.float32)
    with torch.no_grad():  # fp16 weights, fp32 compute: weight rounding only
        torch.testing.assert_close(as_float(x, t, ctx), ours(x, t, ctx), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    cfg = TINY["sd21"]  # upcast attention path
    ours = randomize_(UNet(cfg).eval())
    x, t, ctx, _ = unet_inputs(cfg)
    with torch.no_grad():
        full = ours(x, t, ctx)
        half = ours.to(dtype)(x.to(dtype), t, ctx.to(dtype))
    assert half.dtype == dtype
    err = (half.float() - full).abs().max() / full.abs().max()
    assert err < (5e-2 if dtype == torch.bfloat16 else 1e-2), err


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl", "sdxl-refiner"])
def test_official_manifest_is_covered_exactly(name):
    """The full-size model built from the shapes in the official file's manifest has exactly its tensors."""
    from minunet.keymaps.unet import PREFIX, unet_key_map
    from minunet.loading.unet import config_from_shapes, describe

    shapes = {k[len(PREFIX):]: shape for k, shape in manifest_shapes(f"{name}_unet.tsv").items()}
    cfg = config_from_shapes(shapes, name)
    assert describe(cfg) == f"{name} UNet"
    with torch.device("meta"):
        model = UNet(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    mapping = unet_key_map(list(ours), cfg)
    assert set(mapping) == set(shapes), set(mapping) ^ set(shapes)
    assert {k: ours[v] for k, v in mapping.items()} == shapes
    # and the diffusers-folder manifest has exactly minunet's names and shapes
    assert manifest_shapes(f"diffusers/{name}_unet.tsv") == ours


def test_config_translator_refuses_what_it_does_not_do(request):
    root = request.config.rootpath / "weights" / "configs"
    cfg = json.loads((root / "stable-diffusion-x4-upscaler" / "unet" / "config.json").read_text())
    with pytest.raises(ValueError, match="num_class_embeds"):
        unet_config(cfg)
    cfg = json.loads((root / "stable-diffusion-v1-5" / "unet" / "config.json").read_text())
    assert unet_config(cfg) == UNetConfig()
    with pytest.raises(ValueError, match="unknown field 'wobble'"):
        unet_config({**cfg, "wobble": 1})
    with pytest.raises(ValueError, match="time_embedding_type"):
        unet_config({**cfg, "time_embedding_type": "fourier"})


def test_sdxl_needs_added_conditioning():
    cfg = TINY["sdxl"]
    model = UNet(cfg).eval()
    x, t, ctx, kw = unet_inputs(cfg)
    with pytest.raises(ValueError, match="text_embeds"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match="expects 2816"):
        model(x, t, ctx, text_embeds=kw["text_embeds"], time_ids=kw["time_ids"][:, :5])


# ---- bad input: every way a file can be wrong gives a message naming the file and the problem ----

@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    model = randomize_(UNet(TINY["sd15"]))
    path = tmp_path_factory.mktemp("good") / "model.safetensors"
    state = {k: v.contiguous() for k, v in original_state_dict(model).items()}
    st.save_file(state, path)
    return path, state


def test_truncated_file(good_file, tmp_path):
    path, _ = good_file
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: truncated: tensor '.*' ends at byte"):
        load_unet(bad)


@pytest.mark.parametrize("content", [b"", b"hello", b"\x80\x02}q\x00" + b"\x00" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00[1,2,3]"])
def test_not_a_safetensors_file(content, tmp_path):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a safetensors file"):
        load_unet(bad)


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickles_are_refused(suffix, tmp_path):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"anything")
    with pytest.raises(CheckpointError, match="pickle.*safetensors"):
        load_unet(bad)


def test_missing_keys_are_listed(good_file, tmp_path):
    _, state = good_file
    gone = ["model.diffusion_model.out.2.bias", "model.diffusion_model.input_blocks.1.1.proj_out.weight"]
    path = tmp_path / "missing.safetensors"
    st.save_file({k: v for k, v in state.items() if k not in gone}, path)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors.*2 missing keys: .*conv_out\.bias.*"
                                              r"down_blocks\.0\.attentions\.0\.proj_out\.weight"):
        load_unet(path, config=TINY["sd15"])


def test_unexpected_key(good_file, tmp_path):
    _, state = good_file
    path = tmp_path / "extra.safetensors"
    st.save_file({**state, "model.diffusion_model.input_blocks.1.0.bogus.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"extra\.safetensors: 1 unknown UNet keys .*input_blocks\.1\.0\.bogus"):
        load_unet(path)


def test_wrong_shape(good_file, tmp_path):
    _, state = good_file
    key = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    path = tmp_path / "shape.safetensors"
    st.save_file({**state, key: torch.zeros(64, 32)}, path)
    with pytest.raises(CheckpointError, match=r"shape\.safetensors.*wrong shape for 'mid_block\.attentions\.0\."
                                              r"transformer_blocks\.0\.attn1\.to_q\.weight': expected \[64, 64\], found \[64, 32\]"):
        load_unet(path)


def test_unsupported_architectures(good_file, tmp_path):
    _, state = good_file
    path = tmp_path / "upscaler.safetensors"
    st.save_file({**state, "model.diffusion_model.label_emb.weight": torch.zeros(1000, 128)}, path)
    with pytest.raises(CheckpointError, match=r"upscaler\.safetensors: unsupported UNet architecture"):
        load_unet(path)
    path = tmp_path / "vae_only.safetensors"
    st.save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"vae_only\.safetensors: no 'model\.diffusion_model\.\*' tensors"):
        load_unet(path)


def test_missing_paths_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_unet(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_unet(tmp_path)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time: patch the constant
    with pytest.raises(CheckpointError, match="pass its local path"):
        load_unet("someone/some-model")
