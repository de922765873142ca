"""LoRA: kohya / A1111 and diffusers / PEFT files on tiny SD 1.5 and SDXL pipelines against diffusers'
load_lora_weights (UNet and text-encoder outputs within 1e-5, latents within 1e-4), against weights merged by
hand, fuse / unfuse bit for bit, the name tables, and every kind of bad file."""
import warnings

import pytest
import safetensors.torch as st
import torch

import loras
from helpers import TINY, assert_close, randomize_, unet_inputs
from minunet import UNet
from minunet.errors import CheckpointError
from minunet.keymaps.unet import unet_key_map
from minunet.loading.lora import (fuse_loras, load_unet_lora, lora_targets, module_names, parse_key, parse_lora_arg,
                                  unet_loras, unload_loras)
from minunet.pipelines.image import Pipeline


def diffusers_pipe(folder):
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if (folder / "text_encoder_2").is_dir() else \
        diffusers.StableDiffusionPipeline
    kw = {} if cls is diffusers.StableDiffusionXLPipeline else dict(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(folder, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def targets(pipe):
    """{component: model} of a minunet Pipeline, named as in a diffusers folder."""
    out = {"unet": pipe.unet}
    out.update({spec.subfolder: enc for spec, enc in zip(pipe.text.specs, pipe.text.encoders)})
    return out


def kohya_file(pipe, path, seed=0, alphas=(8.0,), original=False):
    """A kohya file over UNet attention, feed-forward, projections, 3x3 resnet convs (LoCon), time projections,
    shortcuts, resamplers, conv_in / conv_out, and every text encoder's attention and MLP (bigG's projection)."""
    t = targets(pipe)
    parts = {"lora_unet_": loras.random_lora(loras.lora_modules(pipe.unet, loras.UNET_LEAVES, loras.UNET_TOP),
                                             seed, alphas=alphas)}
    text_prefixes = ["lora_te1_", "lora_te2_"] if "text_encoder_2" in t else ["lora_te_"]
    for i, (prefix, name) in enumerate(zip(text_prefixes, [n for n in t if n != "unet"])):
        parts[prefix] = loras.random_lora(loras.lora_modules(t[name], loras.TEXT_LEAVES, ("text_projection",)),
                                          seed + 1 + i, alphas=alphas)
    state = loras.kohya(parts, loras.original_names(pipe.unet) if original else None)
    st.save_file(state, path)
    return path


def peft_file(pipe, path, seed=0):
    """A PEFT file (diffusers' save_lora_weights layout and metadata) with mixed ranks and alphas."""
    t = targets(pipe)
    leaves = {"unet": loras.UNET_LEAVES}
    parts = {name: loras.random_lora(loras.lora_modules(m, leaves.get(name, loras.TEXT_LEAVES), loras.UNET_TOP
                                                        if name == "unet" else ()), seed + i, alphas=(8.0, 1.0, 3.0))
             for i, (name, m) in enumerate(t.items())}
    state, meta = loras.peft(parts)
    st.save_file(state, path, metadata=meta)
    return path


def compare_components(ours, theirs, cfg_dim):
    """UNet and every text encoder, minunet vs diffusers, within 1e-5 of the output scale."""
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 4, 8, 12, generator=g), torch.tensor([999.0, 10.0])
    ctx = torch.randn(2, 77, cfg_dim, generator=g)
    kw = {}
    if ours.unet.config.adm_in_channels is not None:
        kw = dict(text_embeds=torch.randn(2, 32, generator=g), time_ids=torch.rand(2, 6, generator=g) * 1024)
    with torch.no_grad():
        expected = theirs.unet(x, t, ctx, added_cond_kwargs=kw or None).sample
        assert_close(ours.unet(x, t, ctx, **kw), expected, msg="unet")
        ids = ours.text.tokenize(["a red fox", "a lighthouse at dusk"])
        refs = [theirs.text_encoder, getattr(theirs, "text_encoder_2", None)]
        for enc, ref in zip(ours.text.encoders, [r for r in refs if r is not None]):
            a, b = enc(ids, output_hidden_states=True), ref(ids, output_hidden_states=True)
            assert_close(a.hidden_states[-2], b.hidden_states[-2], msg="text hidden state")
            assert_close(a[0], b[0], msg="text output")
            if hasattr(b, "text_embeds"):
                assert_close(a.text_embeds, b.text_embeds, msg="pooled")
    return expected


LATENT_CALL = dict(prompt="a red fox in the snow", negative_prompt="blurry", num_inference_steps=3, height=64, width=48)


def latents_of(ours):
    return ours(**LATENT_CALL, generator=torch.Generator().manual_seed(0), output_type="latent", progress=False).images


def compare_latents(ours, theirs):
    kw = LATENT_CALL
    a = latents_of(ours)
    b = theirs(**kw, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert_close(a, b, rel=1e-4, msg="latents")
    return a


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_kohya_and_peft_together_equal_diffusers(family, sd, sdxl, tmp_path):
    """Two LoRAs at once, a kohya one (SDXL: the original layout's names, as kohya writes SDXL) and a PEFT one,
    at different scales, equal diffusers' load_lora_weights + set_adapters on UNet and text encoders."""
    folder, ours = sd if family == "sd" else sdxl[0::2]  # (base folder, base Pipeline)
    kohya_path = kohya_file(ours, tmp_path / "kohya.safetensors", original=family == "sdxl")
    peft_path = peft_file(ours, tmp_path / "peft.safetensors", seed=10)
    theirs = diffusers_pipe(folder)
    quiet(theirs.load_lora_weights, str(kohya_path), adapter_name="k")
    quiet(theirs.load_lora_weights, str(peft_path), adapter_name="p")
    theirs.set_adapters(["k", "p"], adapter_weights=[0.7, -0.4])
    base = latents_of(ours)  # (equal to diffusers' without a LoRA: test_pipeline.py)
    ours.load_lora(kohya_path, 0.7)
    ours.load_lora(peft_path, -0.4)
    try:
        assert len(ours.loras) == 2 and all(len(lora.layers) > 50 for lora in ours.loras)
        compare_components(ours, theirs, ours.unet.config.context_dim)
        latents = compare_latents(ours, theirs)
        assert (latents - base).abs().max() > 0.1 * base.abs().max()  # the LoRAs did change the result
    finally:
        ours.unload_lora()
    torch.testing.assert_close(latents_of(ours), base, rtol=0, atol=0)  # and off again, exactly


def test_cli_generate_with_loras(tmp_path, capsys):
    """--lora FILE[:SCALE], repeatable: applied to the UNet and the text encoder, recorded in the PNG; a bad file
    is a one-line error."""
    import json

    from PIL import Image

    from minunet.cli import main
    tiny = Pipeline.tiny()
    kohya_file(tiny, tmp_path / "a.safetensors")
    kohya_file(tiny, tmp_path / "b.safetensors", seed=5)
    base = ["generate", "a fox", "--model", "tiny", "--steps", "2", "--size", "32x32"]
    images = {}
    for name, extra in (("plain", []), ("one", ["--lora", f"{tmp_path / 'a.safetensors'}:0.5"]),
                        ("two", ["--lora", f"{tmp_path / 'a.safetensors'}:0.5", "--lora",
                                 str(tmp_path / "b.safetensors")])):
        assert main(base + extra + ["--out", str(tmp_path / f"{name}.png")]) == 0
        images[name] = Image.open(tmp_path / f"{name}.png")
    assert json.loads(images["two"].text["parameters"])["lora"] == [[str(tmp_path / "a.safetensors"), 0.5],
                                                                     [str(tmp_path / "b.safetensors"), 1.0]]
    pixels = {k: torch.tensor(list(v.convert("RGB").getdata()), dtype=torch.float32) for k, v in images.items()}
    assert (pixels["plain"] - pixels["one"]).abs().max() > 10 and (pixels["one"] - pixels["two"]).abs().max() > 10
    st.save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(1, 1)}, tmp_path / "bad.safetensors")
    capsys.readouterr()
    # a broken file is a model error (exit 1), not a usage error (exit 2)
    assert main(base + ["--lora", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "x.png")]) == 1
    assert "lora_unet_nothing_here.lora_down.weight" in capsys.readouterr().err


def merged_reference(cfg, state, lora, scale):
    """A diffusers UNet holding W + scale * alpha / rank * up @ down, merged here by hand."""
    from helpers import diffusers_unet

    state = dict(state)
    for path, (down, up, alpha) in lora.items():
        w = state[path + ".weight"]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * (scale * alpha / down.shape[0])
        state[path + ".weight"] = w + delta
    merged = UNet(cfg)
    merged.load_state_dict(state)
    return diffusers_unet(merged)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_per_module_alphas_equal_weights_merged_by_hand(name, tmp_path):
    """kohya files with a different alpha per module (common: trainers with conv_alpha != alpha). diffusers 0.42
    applies the most common alpha to every module here (its alpha_pattern keys keep `.processor.to_q_lora.down`
    names that match no module), so the reference is the diffusers UNet with the update merged by hand."""
    cfg = TINY[name]
    ours = randomize_(UNet(cfg).eval(), seed=5)
    layers = loras.random_lora(loras.lora_modules(ours, loras.UNET_LEAVES, loras.UNET_TOP), seed=6,
                               ranks=(4, 2, 3), alphas=(8.0, 1.0, 0.5))
    path = tmp_path / "l.safetensors"
    st.save_file(loras.kohya({"lora_unet_": layers}, loras.original_names(ours) if name == "sdxl" else None), path)
    ref = merged_reference(cfg, ours.state_dict(), layers, 0.8)
    x, t, ctx, kw = unet_inputs(cfg)
    from helpers import diffusers_kwargs
    with torch.no_grad():
        expected = ref(x, t, ctx, **diffusers_kwargs(kw)).sample
        lora = load_unet_lora(ours, path, 0.8)
        assert_close(ours(x, t, ctx, **kw), expected, msg="unmerged")
        lora.fuse()
        assert_close(ours(x, t, ctx, **kw), expected, msg="fused")


def test_fuse_unfuse_bit_exact_and_scale(tmp_path):
    """fuse == unmerged; unfuse (any order, several LoRAs) puts back the very weights; scale 0 is no LoRA;
    changing the scale of a fused LoRA re-merges it."""
    cfg = TINY["sd15"]
    unet = randomize_(UNet(cfg).eval(), seed=2)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    files = []
    for seed in (0, 1):
        layers = loras.random_lora(loras.lora_modules(unet, loras.UNET_LEAVES, loras.UNET_TOP), seed)
        files.append(tmp_path / f"{seed}.safetensors")
        st.save_file(loras.kohya({"lora_unet_": layers}), files[-1])
    x, t, ctx, _ = unet_inputs(cfg)
    with torch.no_grad():
        plain = unet(x, t, ctx)
        a, b = load_unet_lora(unet, files[0], 0.6), load_unet_lora(unet, files[1], 1.3)
        unmerged = unet(x, t, ctx)
        fuse_loras(unet)
        assert a.fused and b.fused
        assert_close(unet(x, t, ctx), unmerged, msg="fused vs unmerged")
        b.scale = 0.2  # re-merged at the new scale: equal to b unmerged at 0.2
        rescaled = unet(x, t, ctx)
        assert (rescaled - unmerged).abs().max() > 1e-2
        b.unfuse()
        assert not b.fused and a.fused
        assert_close(unet(x, t, ctx), rescaled, msg="fused at the new scale vs unmerged")
        a.unfuse(), b.fuse(), b.unfuse()
        for k, v in unet.state_dict().items():
            assert torch.equal(v, before[k]), k
        a.scale = b.scale = 0.0
        torch.testing.assert_close(unet(x, t, ctx), plain, rtol=0, atol=0)
        a.scale, b.scale = 0.6, 1.3
        assert (unet(x, t, ctx) - plain).abs().max() > 1e-2
        unload_loras(unet)
        torch.testing.assert_close(unet(x, t, ctx), plain, rtol=0, atol=0)
        assert unet_loras(unet) == []


@pytest.mark.parametrize("name", list(TINY))
def test_name_tables_cover_every_module(name):
    """Every Linear / Conv2d has its kohya name in diffusers' paths and (UNet) in the original layout's, each
    resolving to that module and no other; PEFT names are the paths."""
    unet = UNet(TINY[name])
    table = module_names(unet, "kohya")
    paths = lora_targets(unet)
    mapping = unet_key_map(list(unet.state_dict()), unet.config)
    original = {m[:-7]: o[:-7] for o, m in mapping.items() if m.endswith(".weight")}
    for p in paths:
        assert table[p.replace(".", "_")] == p
        assert table[original[p].replace(".", "_")] == p
    assert len(table) == 2 * len(paths) - sum(original[p] == p for p in paths)
    assert module_names(unet, "peft") == {p: p for p in paths}


def test_parse_key_rows():
    assert parse_key("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight") == \
        ("kohya", "unet", "down_blocks_0_attentions_0_proj_in", "down")
    assert parse_key("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha") == \
        ("kohya", "text_encoder_2", "text_model_encoder_layers_0_mlp_fc1", "alpha")
    assert parse_key("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight") == \
        ("peft", "text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj", "up")
    assert parse_key("unet.mid_block.attentions.0.proj_in.lora.down.weight")[1:] == \
        ("unet", "mid_block.attentions.0.proj_in", "down")
    assert parse_key("lora_unet_x.dora_scale") is None and parse_key("model.diffusion_model.x.weight") is None


def test_parse_lora_arg():
    assert parse_lora_arg("style.safetensors:0.8") == (parse_lora_arg("style.safetensors")[0], 0.8)
    assert parse_lora_arg("style.safetensors")[1] == 1.0
    assert parse_lora_arg("C:/loras/a.safetensors:-.5")[1] == -0.5
    assert str(parse_lora_arg("dir:with/colon.safetensors")[0]) == "dir:with/colon.safetensors"


def test_unet_load_lora_skips_text_keys_with_a_warning(tmp_path):
    unet = randomize_(UNet(TINY["sd15"]).eval())
    mods = loras.lora_modules(unet, ("to_q",))
    sd = loras.kohya({"lora_unet_": loras.random_lora(mods),
                      "lora_te_": {"text_model.encoder.layers.0.mlp.fc1": (torch.zeros(2, 4), torch.zeros(4, 2), 1.)}})
    st.save_file(sd, tmp_path / "l.safetensors")
    with pytest.warns(UserWarning, match="text_encoder"):
        lora = load_unet_lora(unet, tmp_path / "l.safetensors")
    assert len(lora.layers) == len(mods)


def _bad(unet, state, match, tmp_path):
    x, t, ctx, _ = unet_inputs(unet.config)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.no_grad():
        plain = unet(x, t, ctx)
    path = tmp_path / "bad.safetensors"
    st.save_file(state, path)
    with pytest.raises(CheckpointError, match=match):
        load_unet_lora(unet, path)
    # nothing applied: same weights, same output, no LoRA registered
    assert unet_loras(unet) == [] and all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, ctx), plain, rtol=0, atol=0)


def test_bad_files_are_clear_errors_and_apply_nothing(tmp_path):
    unet = randomize_(UNet(TINY["sd15"]).eval())
    good = loras.kohya({"lora_unet_": loras.random_lora(loras.lora_modules(unet, ("to_q", "conv1")))})
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    # a module the model does not have (all listed), and an unknown kind of key
    _bad(unet, {**good, "lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight": torch.zeros(4, 32, 3, 3),
                "lora_unet_down_blocks_9_resnets_0_conv1.lora_up.weight": torch.zeros(32, 4, 1, 1),
                f"{stem}.dora_scale": torch.zeros(1, 32)},
         r"3 LoRA keys name no module.*to_q\.dora_scale, .*down_blocks_9_resnets_0_conv1\.lora_down", tmp_path)
    # a down without its up
    _bad(unet, {k: v for k, v in good.items() if k != f"{stem}.lora_up.weight"}, "to_q has .* but no up", tmp_path)
    # wrong shapes: down's input width, up's output width, a 1x1 down on a 3x3 conv
    for key, shape in ((f"{stem}.lora_down.weight", (4, 31)), (f"{stem}.lora_up.weight", (33, 4)),
                       ("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", (4, 32, 1, 1))):
        _bad(unet, {**good, key: torch.zeros(shape)}, rf"{key} has shape {list(shape)}".replace("[", r"\[")
             .replace("]", r"\]"), tmp_path)
    # a non-scalar alpha; a file with no LoRA at all
    _bad(unet, {**good, f"{stem}.alpha": torch.ones(2)}, "must be one number", tmp_path)
    _bad(unet, {"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0)}, "no LoRA layer", tmp_path)


def test_pickle_refused(tmp_path):
    unet = UNet(TINY["sd15"])
    (tmp_path / "l.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pickle"):
        load_unet_lora(unet, tmp_path / "l.pt")


def test_save_kohya_round_trip(tmp_path):
    """A loaded LoRA saved in the kohya format loads back to the same tensors and the same output."""
    unet = randomize_(UNet(TINY["sdxl"]).eval())
    layers = loras.random_lora(loras.lora_modules(unet, loras.UNET_LEAVES), alphas=(8.0, 1.0))
    st.save_file(loras.kohya({"lora_unet_": layers}, loras.original_names(unet)), tmp_path / "a.safetensors")
    x, t, ctx, kw = unet_inputs(unet.config)
    with torch.no_grad():
        lora = load_unet_lora(unet, tmp_path / "a.safetensors", 0.9)
        expected = unet(x, t, ctx, **kw)
        lora.save(tmp_path / "b.safetensors")
        unload_loras(unet)
        again = load_unet_lora(unet, tmp_path / "b.safetensors", 0.9)
        torch.testing.assert_close(unet(x, t, ctx, **kw), expected, rtol=0, atol=0)
    assert set(again.state_dict()) == set(lora.state_dict())
    assert all(k.startswith("lora_unet_down_blocks_") or k.startswith(("lora_unet_mid", "lora_unet_up"))
               for k in st.load_file(tmp_path / "b.safetensors"))
