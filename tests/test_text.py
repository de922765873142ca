"""Text conditioning: single-file key maps (checked against an independent OpenCLIP forward and diffusers' own
conversion), the shipped tokenizer, prompt encodings against diffusers' encode_prompt, manifest coverage, errors."""
import math
import shutil
import warnings

import pytest
import safetensors.torch as st
import torch
import torch.nn.functional as F
from transformers import CLIPTextModel, CLIPTokenizer

from helpers import assert_close, manifest_shapes, randomize_
from minunet.models.config import PRESETS, family
from minunet.errors import CheckpointError
from minunet.loading.io import check_state_dict
from minunet.keymaps.text import convert, detect_family
from minunet.loading.text import (SPECS, TextConditioner, build, file_names, load_text_conditioner, load_tokenizer,
                          tokenize,
                          module_names, plan_embedder, shipped_config, tiny_text_config)
from minunet.weights import CONFIGS, TOKENIZER

OTHER_COMPONENTS = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2),
                    "first_stage_model.decoder.conv_in.weight": torch.zeros(2), "betas": torch.zeros(10),
                    "model_ema.decay": torch.tensor(0.9999)}
PROMPTS = ["a photo of an astronaut riding a horse on Mars", "", "A  CAT,   sitting!! 123 4.5 #tag @home",
           "naïve café — crème brûlée 東京 🙂", "it's a dog's life; they'll've gone",
           "  leading and trailing  ",
           "highly detailed, " * 30]  # the last one is 91 words: truncated


def tiny_ids(batch=3, seed=0):
    """Token ids as the tokenizer makes them: start, tokens, end (the highest id, where pooling reads), padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    for b, n in enumerate([5, 20, 75][:batch]):
        ids[b, 0], ids[b, n + 1] = 49406, 49407
        ids[b, 1:n + 1] = torch.randint(1, 49406, (n,), generator=g)
    return ids


# ---- an independent OpenCLIP text tower: torch's MultiheadAttention fed the fused in_proj, as open_clip does
def open_clip_state(width, layers, proj, seed):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(shape[-1]))

    sd = {"token_embedding.weight": r(49408, width), "positional_embedding": r(77, width),
          "ln_final.weight": 1 + r(width, scale=0.2), "ln_final.bias": r(width, scale=0.2),
          "text_projection": r(width, proj), "logit_scale": torch.tensor(4.6)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd |= {p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width, scale=0.2),
               p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width, scale=0.2),
               p + "ln_1.weight": 1 + r(width, scale=0.2), p + "ln_1.bias": r(width, scale=0.2),
               p + "ln_2.weight": 1 + r(width, scale=0.2), p + "ln_2.bias": r(width, scale=0.2),
               p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width, scale=0.2),
               p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width, scale=0.2)}
    return sd


@torch.no_grad()
def open_clip_forward(sd, ids, heads, n_layers):
    """(block outputs [after block 0, 1, ...], ln_final, pooled = ln_final(x)[eot] @ text_projection)."""
    width = sd["positional_embedding"].shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    outs = []
    for i in range(n_layers):
        p = f"transformer.resblocks.{i}."
        attn.load_state_dict({k[len(p) + 5:]: v for k, v in sd.items() if k.startswith(p + "attn.")})
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        outs.append(x)

    def ln_final(t):
        return F.layer_norm(t, (width,), sd["ln_final.weight"], sd["ln_final.bias"])

    pooled = ln_final(x)[torch.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]
    return outs, ln_final, pooled


def prefixed(prefix, sd):
    return {prefix + k: v.contiguous() for k, v in sd.items()}


def random_clip_l(width=64, layers=2, seed=0):
    """A random transformers CLIP ViT-L-structured text model (quick_gelu, CLIP-L token ids)."""
    return randomize_(CLIPTextModel(tiny_text_config("sd1", width=width, layers=layers, head_size=64)).eval(), seed)


def diffusers_converted(model, checkpoint, prefix):
    """diffusers' own OpenCLIP conversion (loaders.single_file_utils) loaded into `model`; -> unexpected keys."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    sd = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
    missing, unexpected = model.load_state_dict(module_names(model, sd), strict=False)
    assert not missing, missing
    return unexpected


# ---- single-file layouts
@torch.no_grad()
def test_sd2_open_clip_layout(tmp_path):
    """3 blocks in the file: the 3rd and the projection are dropped, the context is ln_final(block 2 output).
    Width 128 -> 2 heads of 64 read off the shapes."""
    sd = open_clip_state(128, 3, 128, seed=1)
    path = tmp_path / "sd2.safetensors"
    st.save_file({**prefixed("cond_stage_model.model.", sd), **OTHER_COMPONENTS}, path)
    text = TextConditioner.from_single_file(path)
    assert text.family == "sd2" and len(text.encoders) == 1
    cfg = text.encoders[0].config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_act) == (128, 2, 2, "gelu")
    ids = tiny_ids()
    outs, ln_final, _ = open_clip_forward(sd, ids, heads=2, n_layers=3)
    ours = text.encoders[0](ids).last_hidden_state
    assert_close(ours, ln_final(outs[1]), msg="SD2 context vs OpenCLIP penultimate + ln_final")

    # diffusers' conversion drops resblocks.23 by name only, so on a 3-block file it leaves block 2 over
    ref = build(cfg, False).to_empty(device="cpu")
    unexpected = diffusers_converted(ref, prefixed("cond_stage_model.model.", sd), "cond_stage_model.model.")
    assert all(".layers.2." in k for k in unexpected) and len(unexpected) == 16
    getattr(ref, "text_model", ref).embeddings.position_ids.copy_(torch.arange(77)[None])
    torch.testing.assert_close(ours, ref(ids).last_hidden_state, rtol=0, atol=0)
    emb = text.encode("a red cube", guidance=False)
    torch.testing.assert_close(emb.context, ref(text.tokenize("a red cube")).last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["sdxl", "sdxl-refiner"])
@torch.no_grad()
def test_sdxl_layouts(tmp_path, layout):
    """bigG (OpenCLIP, projection transposed) alone (refiner) or after CLIP ViT-L (base); other keys skipped."""
    # the official projection is square, where a missing transpose still loads: the refiner case is square (its
    # pooled vector must match the reference), the base case not (proj 96 from width 128)
    proj = 96 if layout == "sdxl" else 128
    g_sd = open_clip_state(128, 3, proj, seed=2)
    g_prefix = "conditioner.embedders.1.model." if layout == "sdxl" else "conditioner.embedders.0.model."
    state = {**prefixed(g_prefix, g_sd), **OTHER_COMPONENTS}
    if layout == "sdxl":
        clip_l = random_clip_l(seed=3)
        state |= prefixed("conditioner.embedders.0.transformer.", file_names(clip_l))
        state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77.)[None].half()
    st.save_file(state, tmp_path / "xl.safetensors")
    text = TextConditioner.from_single_file(tmp_path / "xl.safetensors")
    assert text.family == layout and text.pooled_dim == proj
    assert text.force_zeros_for_empty_prompt == (layout == "sdxl")
    ids = tiny_ids()
    big_g = text.encoders[-1]
    out = big_g(ids, output_hidden_states=True)
    outs, _, pooled = open_clip_forward(g_sd, ids, heads=2, n_layers=3)
    assert_close(out.hidden_states[-2], outs[1], msg="bigG penultimate")
    assert_close(out.text_embeds, pooled, msg="bigG pooled (text_projection transposed)")

    ref = build(big_g.config, True).to_empty(device="cpu")
    assert not diffusers_converted(ref, prefixed(g_prefix, g_sd), g_prefix)
    ref.text_model.embeddings.position_ids.copy_(torch.arange(77)[None])
    theirs = ref(ids, output_hidden_states=True)
    torch.testing.assert_close(out.text_embeds, theirs.text_embeds, rtol=0, atol=0)
    torch.testing.assert_close(out.hidden_states[-2], theirs.hidden_states[-2], rtol=0, atol=0)

    emb = text.encode("a red cube", guidance=False)
    parts = [e(text.tokenize("a red cube", i), output_hidden_states=True).hidden_states[-2]
             for i, e in enumerate(text.encoders)]
    if layout == "sdxl":
        torch.testing.assert_close(parts[0], clip_l(text.tokenize("a red cube", 0), output_hidden_states=True)
                                   .hidden_states[-2], rtol=0, atol=0)
        assert text.tokenizers[0].pad_token == "<|endoftext|>" and text.tokenizers[1].pad_token == "!"
    torch.testing.assert_close(emb.context, torch.cat(parts, dim=-1), rtol=0, atol=0)
    assert emb.context.shape == (1, 77, text.context_dim)


@pytest.mark.parametrize("with_text_model", [True, False])
@torch.no_grad()
def test_sd1_layout(tmp_path, with_text_model):
    model = random_clip_l(width=128, seed=4)  # 2 heads of 64, as read off the shapes
    state = file_names(model)
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if not with_text_model:
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    st.save_file({**prefixed("cond_stage_model.transformer.", state), **OTHER_COMPONENTS}, tmp_path / "sd1.safetensors")
    text = TextConditioner.from_single_file(tmp_path / "sd1.safetensors")
    assert text.family == "sd1" and text.pooled_dim is None and text.tokenizers[0].pad_token == "<|endoftext|>"
    loaded = text.encoders[0]
    assert loaded.config.num_attention_heads == 2 and loaded.config.hidden_act == "quick_gelu"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = tiny_ids()
    torch.testing.assert_close(loaded(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=0)
    # heads are not in the shapes: an explicit config wins (and the same weights then compute differently)
    cfg = tiny_text_config("sd1", width=128, layers=2, head_size=32)
    four = TextConditioner.from_single_file(tmp_path / "sd1.safetensors", configs=[cfg]).encoders[0]
    assert four.config.num_attention_heads == 4


def test_dtype_and_device_arguments(tmp_path):
    sd = open_clip_state(64, 2, 64, seed=5)
    state = {k: v.half() for k, v in prefixed("conditioner.embedders.0.model.", sd).items()}
    st.save_file(state, tmp_path / "r.safetensors")
    half = TextConditioner.from_single_file(tmp_path / "r.safetensors")
    assert half.encoders[0].dtype == torch.float16
    full = load_text_conditioner(tmp_path / "r.safetensors", dtype=torch.float32, device="cpu")
    assert full.encoders[0].dtype == torch.float32
    with torch.no_grad():
        emb = full.encode("x", guidance=False)
    assert emb.context.dtype == emb.pooled.dtype == torch.float32


# ---- tokenizer
TOKENIZER_CONFIGS = ["stable-diffusion-v1-5/tokenizer", "stable-diffusion-2-1/tokenizer",
                     "stable-diffusion-xl-base-1.0/tokenizer", "stable-diffusion-xl-base-1.0/tokenizer_2",
                     "stable-diffusion-xl-refiner-1.0/tokenizer_2"]


def official_tokenizer_folder(tmp_path, name):
    folder = tmp_path / name.replace("/", "_")
    folder.mkdir()
    for f in [TOKENIZER / "vocab.json", TOKENIZER / "merges.txt", *(CONFIGS / name).iterdir()]:
        shutil.copy(f, folder)
    return folder


@pytest.mark.parametrize("name", TOKENIZER_CONFIGS)
def test_shipped_tokenizer_matches_official_config(tmp_path, name):
    reference = CLIPTokenizer.from_pretrained(str(official_tokenizer_folder(tmp_path, name)), local_files_only=True)
    family = {"stable-diffusion-v1-5": "sd1", "stable-diffusion-2-1": "sd2", "stable-diffusion-xl-base-1.0": "sdxl",
              "stable-diffusion-xl-refiner-1.0": "sdxl-refiner"}[name.split("/")[0]]
    index = [s.tokenizer for s in SPECS[family]].index(name.split("/")[1])
    tokenizer = load_tokenizer(None, SPECS[family][index].pad_token)
    expected = reference(PROMPTS, padding="max_length", max_length=reference.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    with pytest.warns(UserWarning) as record:
        ids = tokenize(tokenizer, PROMPTS)
    torch.testing.assert_close(ids, expected, rtol=0, atol=0)
    assert reference.pad_token == tokenizer.pad_token  # "<|endoftext|>" for CLIP-L, "!" for OpenCLIP
    assert ids[1].tolist() == [49406, 49407] + [reference.pad_token_id] * 75
    n_full = len(reference(PROMPTS[-1]).input_ids)
    messages = [str(w.message) for w in record]
    assert n_full > 77 and len(messages) == 1 and f"{n_full - 77} tokens dropped" in messages[0]


def test_pad_tokens():
    assert load_tokenizer(None, "!").pad_token_id == 0
    assert load_tokenizer(None).pad_token_id == 49407


# ---- prompt encodings against diffusers' encode_prompt
@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = TextConditioner.tiny(family, seed=11)
        return cache[family]
    return get


def diffusers_pipeline(text):
    from diffusers import (EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline)
    enc, tok, scheduler = text.encoders, text.tokenizers, EulerDiscreteScheduler(steps_offset=1)
    if text.family in ("sd1", "sd2"):
        return StableDiffusionPipeline(vae=None, text_encoder=enc[0], tokenizer=tok[0], unet=None,
                                       scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    if text.family == "sdxl":
        return StableDiffusionXLPipeline(vae=None, text_encoder=enc[0], text_encoder_2=enc[1], tokenizer=tok[0],
                                         tokenizer_2=tok[1], unet=None, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True)
    return StableDiffusionXLImg2ImgPipeline(vae=None, text_encoder=None, text_encoder_2=enc[0], tokenizer=None,
                                            tokenizer_2=tok[0], unet=None, scheduler=scheduler,
                                            force_zeros_for_empty_prompt=False, requires_aesthetics_score=True)


CASES = [  # (prompt, negative_prompt, prompt_2, negative_prompt_2, guidance, num_images_per_prompt)
    ("a photo of a cat", None, None, None, True, 1),                      # None negative: zeros for SDXL base
    ("a photo of a cat", "", None, None, True, 1),                        # "" is encoded, even for SDXL base
    (["a cat", "a dog on a skateboard"], ["blurry", "ugly, lowres"], None, None, True, 2),
    (["a cat", "a dog"], ["blurry", "bad"], ["oil painting", "watercolor"], ["dark", "noisy"], True, 1),
    (["a cat", "a dog"], None, ["oil painting", "pastel"], None, True, 3),
    ("a cat", None, None, None, False, 2),
    ("a cat", "blurry", "in the style of a woodcut", None, False, 1),
    (PROMPTS[-1], "out of frame, " * 40, None, None, True, 1),             # both truncated
]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
@torch.no_grad()
def test_encode_matches_diffusers(tiny, family):
    text = tiny(family)
    pipe = diffusers_pipeline(text)
    worst = 0.0
    for prompt, negative, prompt_2, negative_2, guidance, n in CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = text.encode(prompt, negative, prompt_2, negative_2, guidance=guidance, num_images_per_prompt=n)
        if family in ("sd1", "sd2"):  # one encoder: prompt_2 / negative_prompt_2 ignored
            ctx, neg = pipe.encode_prompt(prompt, torch.device("cpu"), n, guidance, negative)
            pooled = neg_pooled = None
        else:
            ctx, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompt, prompt_2=prompt_2, device=torch.device("cpu"), num_images_per_prompt=n,
                do_classifier_free_guidance=guidance, negative_prompt=negative, negative_prompt_2=negative_2)
            if not guidance:
                neg_pooled = None  # diffusers returns the unused None negative, and no negative pooled then
        for name, a, b in [("context", ours.context, ctx), ("pooled", ours.pooled, pooled),
                           ("negative_context", ours.negative_context, neg if guidance else None),
                           ("negative_pooled", ours.negative_pooled, neg_pooled)]:
            if b is None:
                assert a is None, name
                continue
            assert a.shape == b.shape, (name, a.shape, b.shape)
            assert_close(a, b, msg=f"{family} {name} {prompt!r:.30}")
            worst = max(worst, float((a - b).abs().max()))
        if family == "sdxl" and negative is None and guidance:
            assert not ours.negative_context.any() and not ours.negative_pooled.any()
    assert worst <= 1e-5
    assert ours.context.shape[-1] == text.context_dim


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
@torch.no_grad()
def test_clip_skip_matches_diffusers(family):
    """clip_skip=k: diffusers' encode_prompt(clip_skip=k) for the prompt; for the negative too, which diffusers
    0.42 leaves at the default layer, so the reference for it is the negative text encoded as a prompt."""
    text = TextConditioner.tiny(family, seed=5, layers=4)
    pipe = diffusers_pipeline(text)
    prompt, negative = ["a red cube", "two cats"], "blurry, lowres"
    skips = range(0, 4) if family in ("sd1", "sd2") else range(0, 3)  # SDXL already reads the penultimate layer

    def reference(texts, k):
        if family in ("sd1", "sd2"):
            if k == 0:
                return pipe.encode_prompt(texts, torch.device("cpu"), 1, False)[0], None
            # diffusers' k > 0 path here reads `text_encoder.text_model.final_layer_norm`, which transformers 5
            # no longer has (AttributeError): its computation, written out
            enc = text.encoders[0]
            states = enc(text.tokenize(texts), output_hidden_states=True).hidden_states
            return enc.final_layer_norm(states[-(k + 1)]), None
        ctx, _, pooled, _ = pipe.encode_prompt(prompt=texts, device=torch.device("cpu"), num_images_per_prompt=1,
                                               do_classifier_free_guidance=False, clip_skip=k)
        return ctx, pooled
    contexts = []
    for k in skips:
        ours = text.encode(prompt, negative, clip_skip=k)
        ctx, pooled = reference(prompt, k)
        neg_ctx, neg_pooled = reference([negative] * 2, k)
        assert_close(ours.context, ctx, msg=f"{family} clip_skip={k} context")
        assert_close(ours.negative_context, neg_ctx, msg=f"{family} clip_skip={k} negative context")
        if pooled is not None:  # the pooled embedding is the final layer's whatever clip_skip says
            assert_close(ours.pooled, pooled, msg=f"{family} clip_skip={k} pooled")
            assert_close(ours.negative_pooled, neg_pooled, msg=f"{family} clip_skip={k} negative pooled")
        contexts.append(ours.context)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(contexts, contexts[1:]))  # each k picks another layer
    plain = text.encode(prompt, negative)
    assert torch.equal(plain.context, contexts[0]) and torch.equal(plain.negative_context,
                                                                   text.encode(prompt, negative, clip_skip=None)[2])


def test_clip_skip_errors():
    text = TextConditioner.tiny("sdxl", layers=4)
    with pytest.raises(ValueError, match=r"clip_skip=3 is too large for text_encoder \(4 layers.*at most 2"):
        text.encode("x", clip_skip=3)
    with pytest.raises(ValueError, match="clip_skip must be None or an int >= 0, got -1"):
        text.encode("x", clip_skip=-1)
    with pytest.raises(ValueError, match="clip_skip must be None or an int >= 0, got 1.0"):
        text.encode("x", clip_skip=1.0)
    with pytest.raises(ValueError, match=r"too large for text_encoder \(4 layers.*at most 3"):
        TextConditioner.tiny("sd1", layers=4).encode("x", clip_skip=4)


def test_encode_batch_errors(tiny):
    text = tiny("sd1")
    with pytest.raises(ValueError, match="negative_prompt has 1 entries but the prompt batch has 2"):
        text.encode(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="prompt must be a str or a list of str"):
        text.encode(3)
    with pytest.raises(ValueError, match="num_images_per_prompt must be an int >= 1, got 0"):
        text.encode("a", num_images_per_prompt=0)


# ---- diffusers folders
def write_folder(text, root, *, flat_keys=False):
    """A diffusers pipeline folder of the tiny conditioner's encoders and the official tokenizer/index configs."""
    official = {"sd1": "stable-diffusion-v1-5", "sd2": "stable-diffusion-2-1", "sdxl": "stable-diffusion-xl-base-1.0",
                "sdxl-refiner": "stable-diffusion-xl-refiner-1.0"}[text.family]
    root.mkdir()
    shutil.copy(CONFIGS / official / "model_index.json", root)
    for spec, enc in zip(text.specs, text.encoders):
        (root / spec.subfolder).mkdir()
        enc.config.to_json_file(str(root / spec.subfolder / "config.json"))
        state = file_names(enc) if not flat_keys else enc.state_dict()
        st.save_file({k: v.contiguous() for k, v in state.items()}, root / spec.subfolder / "model.safetensors")
        shutil.copytree(official_tokenizer_folder(root.parent, f"{official}/{spec.tokenizer}"), root / spec.tokenizer)
    return root


@pytest.mark.parametrize("family", ["sd2", "sdxl", "sdxl-refiner"])
@torch.no_grad()
def test_from_pretrained_folder(tmp_path, tiny, family):
    text = tiny(family)
    loaded = TextConditioner.from_pretrained(write_folder(text, tmp_path / "pipe", flat_keys=family == "sd2"))
    assert loaded.family == family
    assert loaded.force_zeros_for_empty_prompt == (family == "sdxl")  # from model_index.json
    a = text.encode(["a cat", "a dog"], "blurry", ["x", "y"])
    b = loaded.encode(["a cat", "a dog"], "blurry", ["x", "y"])
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert [t.pad_token for t in loaded.tokenizers] == [s.pad_token for s in SPECS[family]]


# ---- manifests of the official files

# documented skips: position_ids (recomputed), logit_scale (unused), SD 2.x's 24th block and projection
IGNORED = {
    "sd15": ["cond_stage_model.transformer.text_model.embeddings.position_ids"],
    "sd21": ["cond_stage_model.model.logit_scale", "cond_stage_model.model.text_projection"]
            + [f"cond_stage_model.model.transformer.resblocks.23.{k}" for k in [
                "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                "ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias"]],
    "sdxl": ["conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                  "conditioner.embedders.1.model.logit_scale"],
    "sdxl-refiner": ["conditioner.embedders.0.model.logit_scale"],
}
FAMILY = {name: family(preset) for name, preset in PRESETS.items()}  # sd15 -> sd1, ..., sdxl-refiner -> itself


@pytest.mark.parametrize("name", list(FAMILY))
def test_single_file_manifest_covered_exactly(name):
    shapes = manifest_shapes(f"{name}_text.tsv")
    family = detect_family(shapes)
    assert family == FAMILY[name]
    used, ignored = set(), set()
    for i, spec in enumerate(SPECS[family]):
        rows, skip, model = plan_embedder(name, shapes, spec)
        official = shipped_config(family, i)
        for field in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                      "max_position_embeddings", "hidden_act"] + (["projection_dim"] if spec.projection else []):
            assert getattr(model.config, field) == getattr(official, field), (name, i, field)
        # map meta tensors of the manifest's shapes and check names and shapes strictly against the model
        state = {t: v for r in rows for t, v in zip(
            r.targets, convert(r, torch.empty(shapes[spec.prefix + r.original], device="meta")))}
        check_state_dict(model, module_names(model, state), name)
        used |= {spec.prefix + r.original for r in rows}
        ignored |= {spec.prefix + k for k in skip} & set(shapes)
    assert not used & ignored
    assert used | ignored == set(shapes), sorted(set(shapes) - used - ignored)[:5]
    assert sorted(ignored) == sorted(IGNORED[name])


@pytest.mark.parametrize("name, config, projection", [
    ("sd15_text_encoder", "stable-diffusion-v1-5/text_encoder", False),
    ("sd21_text_encoder", "stable-diffusion-2-1/text_encoder", False),
    ("sdxl_text_encoder", "stable-diffusion-xl-base-1.0/text_encoder", False),
    ("sdxl_text_encoder_2", "stable-diffusion-xl-base-1.0/text_encoder_2", True),
    ("sdxl-refiner_text_encoder_2", "stable-diffusion-xl-refiner-1.0/text_encoder_2", True)])
def test_diffusers_manifest_matches_transformers_model(name, config, projection):
    from transformers import CLIPTextConfig
    model = build(CLIPTextConfig.from_json_file(str(CONFIGS / config / "config.json")), projection)
    ours = {k: list(v.shape) for k, v in file_names(model).items()}
    theirs = manifest_shapes(f"diffusers/{name}.tsv")
    theirs.pop("text_model.embeddings.position_ids", None)  # in the older files; recomputed on load
    assert ours == theirs


# ---- bad input
@pytest.fixture
def sd1_file(tmp_path):
    state = prefixed("cond_stage_model.transformer.", file_names(random_clip_l(seed=6)))
    return tmp_path, state


def test_missing_key_is_listed(sd1_file):
    tmp_path, state = sd1_file
    del state["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias"]
    st.save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing text-encoder keys: "
                       r"cond_stage_model\.transformer\.text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        TextConditioner.from_single_file(tmp_path / "m.safetensors")


def test_unexpected_key_under_text_prefix(sd1_file):
    tmp_path, state = sd1_file
    state["cond_stage_model.transformer.text_model.encoder.layers.0.adapter.weight"] = torch.zeros(2)
    state["cond_stage_model.extra"] = torch.zeros(2)
    st.save_file(state, tmp_path / "u.safetensors")
    with pytest.raises(CheckpointError, match=r"2 unknown keys under 'cond_stage_model\.'.*"
                       r"cond_stage_model\.extra, .*layers\.0\.adapter\.weight"):
        TextConditioner.from_single_file(tmp_path / "u.safetensors")


def test_wrong_shape_names_key_expected_found(sd1_file):
    tmp_path, state = sd1_file
    state["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    st.save_file(state, tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shape for 'cond_stage_model\.transformer\.text_model\.encoder"
                       r"\.layers\.1\.mlp\.fc1\.weight': expected \[256, 64\], found \[100, 64\]"):
        TextConditioner.from_single_file(tmp_path / "s.safetensors")


def test_open_clip_wrong_fused_shape(tmp_path):
    sd = open_clip_state(64, 2, 64, seed=7)
    sd["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(190, 64)  # block 1 is dropped (SD 2.x)
    st.save_file(prefixed("cond_stage_model.model.", sd), tmp_path / "q.safetensors")
    with pytest.raises(CheckpointError, match=r"resblocks\.0\.attn\.in_proj_weight': expected \[192, 64\], "
                                              r"found \[190, 64\]"):
        TextConditioner.from_single_file(tmp_path / "q.safetensors")


def test_no_text_encoder_in_file(tmp_path):
    st.save_file(OTHER_COMPONENTS, tmp_path / "unet_only.safetensors")
    with pytest.raises(CheckpointError, match="no text encoder in the original layout"):
        TextConditioner.from_single_file(tmp_path / "unet_only.safetensors")


def test_pickles_refused(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="pickle"):
        TextConditioner.from_single_file(tmp_path / "model.ckpt")
    root = write_folder(tiny("sd1"), tmp_path / "pipe")
    (root / "text_encoder" / "model.safetensors").rename(root / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: '\.bin' files are Python pickles"):
        TextConditioner.from_pretrained(root)


def test_folder_missing_key_and_variant(tmp_path, tiny):
    root = write_folder(tiny("sd1"), tmp_path / "pipe")
    path = root / "text_encoder" / "model.safetensors"
    state = st.load_file(path)
    del state["text_model.final_layer_norm.bias"]
    st.save_file(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys: text_model\.final_layer_norm\.bias;"):
        TextConditioner.from_pretrained(root)
    with pytest.raises(CheckpointError, match=r"no model\.fp16\.safetensors"):
        TextConditioner.from_pretrained(root, variant="fp16")
