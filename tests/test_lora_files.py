"""LoRA files as real tools write them: kohya / A1111 keys with transformers 4's `text_model.` level (whatever
transformers is installed), SD 1.x files in both the diffusers and the original layout, diffusers / PEFT keys,
and LyCORIS LoHa / LoKr. Every key name below is written out as the files carry it, never derived from
minunet's own module tables. Reference: diffusers' load_lora_weights (UNet and text-encoder outputs within 1e-5),
or, for LyCORIS (diffusers does not read it), the update computed here from the published formulas."""
import warnings

import pytest
import safetensors.torch as st
import torch

from helpers import TINY, assert_close, randomize_, unet_inputs
from minunet import UNet
from minunet.loading.lora import load_unet_lora, unet_loras, unload_loras

TE_LINEARS = {"self_attn_q_proj": "self_attn.q_proj", "self_attn_k_proj": "self_attn.k_proj",
              "self_attn_v_proj": "self_attn.v_proj", "self_attn_out_proj": "self_attn.out_proj",
              "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}
# tiny SD 1.5 pipeline (tests/pipes.py): UNet 32 / 64, 2 resnets per level, context 32
SD_UNET = {  # kohya diffusers-layout stem: (PEFT path, original-layout stem, weight shape)
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
         "input_blocks_1_1_transformer_blocks_0_attn1_to_q", (32, 32)),
    "down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_k":
        ("down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
         "input_blocks_2_1_transformer_blocks_0_attn2_to_k", (32, 32)),
    "down_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj":
        ("down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
         "input_blocks_4_1_transformer_blocks_0_ff_net_0_proj", (512, 64)),
    "down_blocks_0_resnets_0_conv1": ("down_blocks.0.resnets.0.conv1", "input_blocks_1_0_in_layers_2",
                                      (32, 32, 3, 3)),
    "down_blocks_1_resnets_0_time_emb_proj": ("down_blocks.1.resnets.0.time_emb_proj", "input_blocks_4_0_emb_layers_1",
                                              (64, 128)),
    "mid_block_attentions_0_proj_in": ("mid_block.attentions.0.proj_in", "middle_block_1_proj_in", (64, 64, 1, 1)),
    "up_blocks_0_attentions_2_transformer_blocks_0_attn1_to_out_0":
        ("up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0",
         "output_blocks_2_1_transformer_blocks_0_attn1_to_out_0", (64, 64)),
}


def _pair(g, shape, rank):
    down = torch.randn((rank, *shape[1:]), generator=g) / shape[1] ** 0.5
    up = torch.randn((shape[0], rank) + ((1, 1) if len(shape) == 4 else ()), generator=g) * 0.3
    return down, up


def layers(te_prefixes, unet_layers, seed=0):
    """{kohya stem: (PEFT key stem, down, up, alpha)}: text-encoder stems `lora_te*_text_model_encoder_layers_{i}_*`
    for (kohya prefix, PEFT component, layers, hidden width) in te_prefixes, UNet stems from unet_layers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, component, n, width in te_prefixes:
        for i in range(n):
            for name, path in TE_LINEARS.items():
                shape = {"mlp_fc1": (2 * width, width), "mlp_fc2": (width, 2 * width)}.get(name, (width, width))
                rank = 4 if i % 2 == 0 else 2
                out[f"{prefix}text_model_encoder_layers_{i}_{name}"] = (
                    f"{component}.text_model.encoder.layers.{i}.{path}", *_pair(g, shape, rank), 2.0 * rank - 1)
    for stem, (path, _, shape) in unet_layers.items():
        out["lora_unet_" + stem] = (f"unet.{path}", *_pair(g, shape, 4), 3.0)
    return out


def kohya_state(lay, rename=None):
    sd = {}
    for stem, (_, down, up, alpha) in lay.items():
        stem = (rename or {}).get(stem, stem)
        sd.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(alpha)})
    return sd


def peft_state(lay):
    """diffusers' PEFT layout (`.lora_A.weight` / `.lora_B.weight`), no metadata (alpha = rank), the file's
    alpha / rank folded into B. (A metadata alpha_pattern written with `text_model.` paths matches no module of
    transformers 5's CLIPTextModel in peft 0.21, so diffusers would drop it.)"""
    sd = {}
    for _, (key, down, up, alpha) in lay.items():
        sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = down, up * (alpha / down.shape[0])
    return sd, {"format": "pt"}


def compare_text_and_unet(ours, theirs, ctx_dim):
    g = torch.Generator().manual_seed(3)
    x, t, ctx = torch.randn(2, 4, 8, 12, generator=g), torch.tensor([999.0, 10.0]), torch.randn(2, 77, ctx_dim, generator=g)
    kw = {}
    if ours.unet.config.adm_in_channels is not None:
        kw = dict(text_embeds=torch.randn(2, 32, generator=g), time_ids=torch.rand(2, 6, generator=g) * 1024)
    ids = ours.text.tokenize(["a red fox", "a lighthouse at dusk"])
    refs = [theirs.text_encoder, getattr(theirs, "text_encoder_2", None)]
    with torch.no_grad():
        assert_close(ours.unet(x, t, ctx, **kw), theirs.unet(x, t, ctx, added_cond_kwargs=kw or None).sample,
                     msg="unet")
        for enc, ref in zip(ours.text.encoders, [r for r in refs if r is not None]):
            assert_close(enc(ids)[0], ref(ids)[0], msg="text encoder")
        return [enc(ids)[0] for enc in ours.text.encoders]


def diffusers_with(folder, path):
    import diffusers

    xl = (folder / "text_encoder_2").is_dir()
    cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, **({} if xl else dict(safety_checker=None, requires_safety_checker=False)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(str(path))
    return pipe


def test_sd15_kohya_real_names_both_layouts_equal_diffusers(sd, tmp_path):
    """A kohya SD 1.5 file (`lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight`, ...,
    `lora_unet_down_blocks_0_...`) loads with every key applied; the same tensors under the original layout's
    names (`lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q`, as A1111 / sd-scripts write them) give
    the same model bit for bit; both equal diffusers given the file's PEFT twin
    (`text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight`). (diffusers 0.42 with
    transformers 5 loads the kohya file's text-encoder MLP keys but silently drops its attention keys, so the
    kohya file itself is no reference here.)"""
    folder, ours = sd
    lay = layers([("lora_te_", "text_encoder", 2, 32)], SD_UNET)
    st.save_file(kohya_state(lay), tmp_path / "k.safetensors")
    original = {"lora_unet_" + k: "lora_unet_" + v[1] for k, v in SD_UNET.items()}
    st.save_file(kohya_state(lay, original), tmp_path / "o.safetensors")
    sd_peft, meta = peft_state(lay)
    st.save_file(sd_peft, tmp_path / "p.safetensors", metadata=meta)
    theirs = diffusers_with(folder, tmp_path / "p.safetensors")
    for name in ("k", "o", "p"):
        lora = ours.load_lora(tmp_path / f"{name}.safetensors")
        try:
            assert len(lora.layers) == len(lay) == 2 * 6 + len(SD_UNET)
            outs = compare_text_and_unet(ours, theirs, 32)
            if name == "k":
                first = outs
            elif name == "o":  # the same modules: bit for bit
                torch.testing.assert_close(outs, first, rtol=0, atol=0)
        finally:
            ours.unload_lora()


def test_sdxl_kohya_real_names_equal_diffusers(sdxl, tmp_path):
    """SDXL kohya names: `lora_te1_text_model_...` (CLIP-L, CLIPTextModel: no `text_model.` level in transformers
    5), `lora_te2_text_model_...` (bigG, CLIPTextModelWithProjection), UNet in the original layout; equal to
    diffusers' load_lora_weights of the file itself and of its PEFT twin."""
    folder, _, ours, _ = sdxl
    unet = {"input_blocks_4_1_transformer_blocks_0_attn2_to_k": ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
                                                                  None, (64, 96)),
            "input_blocks_4_1_transformer_blocks_1_attn1_to_v": ("down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_v",
                                                                  None, (64, 64)),
            "middle_block_1_proj_out": ("mid_block.attentions.0.proj_out", None, (64, 64)),
            "output_blocks_0_0_skip_connection": ("up_blocks.0.resnets.0.conv_shortcut", None, (64, 128, 1, 1))}
    lay = layers([("lora_te1_", "text_encoder", 2, 32), ("lora_te2_", "text_encoder_2", 3, 64)], unet)
    st.save_file(kohya_state(lay), tmp_path / "k.safetensors")
    sd_peft, meta = peft_state(lay)
    st.save_file(sd_peft, tmp_path / "p.safetensors", metadata=meta)
    theirs = diffusers_with(folder, tmp_path / "p.safetensors")
    lora = ours.load_lora(tmp_path / "k.safetensors")
    try:
        assert len(lora.layers) == (2 + 3) * 6 + len(unet)
        compare_text_and_unet(ours, theirs, 96)
    finally:
        ours.unload_lora()


def test_text_encoder_names_of_the_installed_transformers_also_load(sd, tmp_path):
    """Files written on transformers 5 by tools that kept CLIPTextModel's own paths (no `text_model.`) load too,
    to the same modules; minunet saves the real files' names."""
    folder, ours = sd
    g = torch.Generator().manual_seed(1)
    down, up = _pair(g, (32, 32), 4)
    for stem in ("lora_te_text_model_encoder_layers_1_self_attn_v_proj", "lora_te_encoder_layers_1_self_attn_v_proj"):
        st.save_file({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}, tmp_path / "a.safetensors")
        lora = ours.load_lora(tmp_path / "a.safetensors")
        try:
            assert lora.paths[next(iter(lora.paths))][0] == "text_encoder"
            lora.save(tmp_path / "b.safetensors")
            assert sorted(st.load_file(tmp_path / "b.safetensors")) == [
                "lora_te_text_model_encoder_layers_1_self_attn_v_proj.alpha",
                "lora_te_text_model_encoder_layers_1_self_attn_v_proj.lora_down.weight",
                "lora_te_text_model_encoder_layers_1_self_attn_v_proj.lora_up.weight"]
        finally:
            ours.unload_lora()


# ---- LyCORIS: LoHa and LoKr, checked against the formulas --------------------------------------------------------

ATTN = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # Linear 64 -> 64
CONV = "lora_unet_down_blocks_1_resnets_0_conv2"                                # Conv2d 64 -> 64, 3x3
MODULES = {ATTN: "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", CONV: "down_blocks.1.resnets.0.conv2"}


def loha_delta(p, shape):
    """LoHa: dW = (w1a @ w1b) * (w2a @ w2b) * alpha / rank; with Tucker cores t1, t2 each factor is
    einsum('i j k l, j r, i p -> p r k l', t, wb, wa)."""
    def factor(a, b, t):
        return a @ b if t is None else torch.einsum("ijkl,jr,ip->prkl", t, b, a)
    w = factor(p["hada_w1_a"], p["hada_w1_b"], p.get("hada_t1")) * factor(p["hada_w2_a"], p["hada_w2_b"], p.get("hada_t2"))
    return w.reshape(shape) * (float(p["alpha"]) / p["hada_w1_b"].shape[0])


def lokr_delta(p, shape):
    """LoKr: dW = kron(w1, w2) * scale, w1 = lokr_w1 or w1_a @ w1_b, w2 = lokr_w2 or w2_a @ w2_b (Tucker: t2);
    scale = alpha / rank with a low-rank factor, 1 with both factors full."""
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    if "lokr_w2" in p:
        w2 = p["lokr_w2"]
    elif "lokr_t2" in p:
        w2 = torch.einsum("ijkl,jr,ip->prkl", p["lokr_t2"], p["lokr_w2_b"], p["lokr_w2_a"])
    else:
        w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    rank = p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else None
    scale = 1.0 if rank is None else float(p["alpha"]) / rank
    return torch.kron(w1.contiguous(), w2.contiguous()).reshape(shape) * scale  # torch.kron needs contiguous


def _r(g, *shape):
    return torch.randn(*shape, generator=g) * 0.3


def lycoris_files(g):
    """name -> {stem: {suffix: tensor}}: LoHa plain and with Tucker cores on the 3x3 conv, LoKr with full w1 /
    decomposed w2, both decomposed, Tucker w2 on the conv, and both full (no rank: alpha unused)."""
    return {
        "loha": {ATTN: dict(hada_w1_a=_r(g, 64, 4), hada_w1_b=_r(g, 4, 64), hada_w2_a=_r(g, 64, 4),
                            hada_w2_b=_r(g, 4, 64), alpha=torch.tensor(2.0)),
                 CONV: dict(hada_w1_a=_r(g, 64, 3), hada_w1_b=_r(g, 3, 64 * 9), hada_w2_a=_r(g, 64, 3),
                            hada_w2_b=_r(g, 3, 64 * 9), alpha=torch.tensor(1.5))},
        "loha-tucker": {CONV: dict(hada_w1_a=_r(g, 3, 64), hada_w1_b=_r(g, 3, 64), hada_t1=_r(g, 3, 3, 3, 3),
                                   hada_w2_a=_r(g, 3, 64), hada_w2_b=_r(g, 3, 64), hada_t2=_r(g, 3, 3, 3, 3),
                                   alpha=torch.tensor(3.0))},
        "lokr": {ATTN: dict(lokr_w1=_r(g, 8, 4), lokr_w2_a=_r(g, 8, 2), lokr_w2_b=_r(g, 2, 16), alpha=torch.tensor(1.0)),
                 CONV: dict(lokr_w1_a=_r(g, 4, 2), lokr_w1_b=_r(g, 2, 8), lokr_w2_a=_r(g, 16, 2),
                            lokr_w2_b=_r(g, 2, 8 * 9), alpha=torch.tensor(4.0))},
        "lokr-tucker": {CONV: dict(lokr_w1=_r(g, 4, 8), lokr_w2_a=_r(g, 2, 16), lokr_w2_b=_r(g, 2, 8),
                                   lokr_t2=_r(g, 2, 2, 3, 3), alpha=torch.tensor(1.0))},
        "lokr-full": {ATTN: dict(lokr_w1=_r(g, 4, 4), lokr_w2=_r(g, 16, 16), alpha=torch.tensor(8.0))},
    }


@pytest.mark.parametrize("name", ["loha", "loha-tucker", "lokr", "lokr-tucker", "lokr-full"])
def test_lycoris_updates_equal_the_formulas_and_fuse_bit_exact(name, tmp_path):
    cfg = TINY["sd15"]
    unet = randomize_(UNet(cfg).eval(), seed=4)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    spec = lycoris_files(torch.Generator().manual_seed(7))[name]
    st.save_file({f"{stem}.{k}": v for stem, parts in spec.items() for k, v in parts.items()}, tmp_path / "l.safetensors")
    x, t, ctx, _ = unet_inputs(cfg)
    formula = loha_delta if name.startswith("loha") else lokr_delta
    with torch.no_grad():
        lora = load_unet_lora(unet, tmp_path / "l.safetensors", 0.7)
        assert len(lora.layers) == len(spec)
        unmerged = unet(x, t, ctx)
        lora.fuse()
        for stem, parts in spec.items():
            key = MODULES[stem] + ".weight"
            expected = before[key] + 0.7 * formula(parts, before[key].shape)
            assert_close(unet.state_dict()[key], expected, rel=1e-6, msg=f"{name} {stem}")
            assert (unet.state_dict()[key] - before[key]).abs().max() > 1e-2  # the update is not negligible
        assert_close(unet(x, t, ctx), unmerged, msg="fused vs unmerged")
        lora.unfuse()
        assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
        unload_loras(unet)
        lora.save(tmp_path / "again.safetensors")  # LyCORIS tensors written back under their own names
        again = load_unet_lora(unet, tmp_path / "again.safetensors", 0.7)
        torch.testing.assert_close(unet(x, t, ctx), unmerged, rtol=0, atol=0)
        again.remove()


def test_lycoris_bad_tensors_are_named_and_apply_nothing(tmp_path):
    from minunet import CheckpointError

    unet = randomize_(UNet(TINY["sd15"]).eval())
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    good = {f"{ATTN}.{k}": v for k, v in lycoris_files(g)["loha"][ATTN].items()}
    cases = [({k: v for k, v in good.items() if not k.endswith("hada_w2_b")}, "needs exactly one of hada_w2_b"),
             ({**good, f"{ATTN}.hada_w1_b": _r(g, 4, 65)}, r"do not combine to that weight's shape"),
             ({**good, f"{ATTN}.lora_down.weight": _r(g, 4, 64)}, "mixes LoRA / LoHa / LoKr"),
             ({f"{CONV}.lokr_w1": _r(g, 4, 8), f"{CONV}.lokr_w2_a": _r(g, 16, 2)}, "lokr_w2_a without lokr_w2_b")]
    for state, match in cases:
        st.save_file(state, tmp_path / "bad.safetensors")
        with pytest.raises(CheckpointError, match=match):
            load_unet_lora(unet, tmp_path / "bad.safetensors")
        assert unet_loras(unet) == [] and all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_peft_older_unet_names_equal_lora_a_b(sd, tmp_path):
    """diffusers' older `unet.{module}.lora.down.weight` / `.lora.up.weight` form gives the model that
    `.lora_A.weight` / `.lora_B.weight` gives, bit for bit."""
    _, ours = sd
    lay = layers([("lora_te_", "text_encoder", 1, 32)], SD_UNET, seed=3)
    new, _ = peft_state(lay)
    old = {k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")
           if k.startswith("unet.") else k: v for k, v in new.items()}
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight" in old
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 77, 32, generator=g)
    ids = ours.text.tokenize(["a fox"])
    with torch.no_grad():
        plain = ours.unet(x, t, ctx)
        outs = []
        for name, state in (("new", new), ("old", old)):
            st.save_file(state, tmp_path / f"{name}.safetensors")
            lora = ours.load_lora(tmp_path / f"{name}.safetensors")
            try:
                assert len(lora.layers) == 6 + len(SD_UNET)
                outs.append((ours.unet(x, t, ctx), ours.text.encoders[0](ids)[0]))
            finally:
                ours.unload_lora()
    assert (outs[0][0] - plain).abs().max() > 1e-3  # the LoRA acts
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
