"""Text conditioning: CLIP tokenizers and text encoders (transformers' models) and the prompt encodings of the
official pipelines, loaded from diffusers folders or original single files with no network.

    text = TextConditioner.from_single_file("sd_xl_base_1.0.safetensors", dtype=torch.float16, device="cuda")
    text = TextConditioner.from_pretrained("path/to/stable-diffusion-xl-base-1.0")   # text_encoder*/, tokenizer*/
    text = TextConditioner.tiny("sdxl", seed=0)                                      # random, for demos and tests
    with torch.no_grad():
        emb = text.encode(["a cat", "a dog"], negative_prompt="blurry", num_images_per_prompt=2)
    emb.context, emb.pooled, emb.negative_context, emb.negative_pooled   # a NamedTuple, also unpacks as 4-tuple

`TextConditioner.family` is "sd1", "sd2", "sdxl" or "sdxl-refiner"; `context_dim` and `pooled_dim` say the widths
the UNet must take. What `encode` returns is what diffusers' `encode_prompt` returns for the same pipeline:
- sd1, sd2: the last hidden state (after final_layer_norm) of the one encoder, (B, 77, 768 | 1024); no pooled.
  SD 2.x uses OpenCLIP-H's penultimate block; diffusers' SD 2.x encoder simply has 23 of the 24 blocks, so its
  last hidden state is that block's output after the final norm, exactly what the original code computes.
- sdxl: both encoders' penultimate hidden states (hidden_states[-2], no final norm) concatenated, CLIP-L (768)
  then OpenCLIP-bigG (1280) = 2048; pooled = bigG's projected end-of-text state (`text_embeds`, 1280).
  `prompt_2` (defaults to `prompt`) goes to bigG, `negative_prompt_2` (defaults to `negative_prompt`) too.
- sdxl-refiner: bigG's penultimate hidden state (1280) and pooled. Its one encoder reads `prompt` and
  `negative_prompt`; `prompt_2` / `negative_prompt_2` are ignored, as in diffusers' StableDiffusionXLImg2ImgPipeline
  (and by sd1 / sd2, which have one encoder).
- negatives (when `guidance`): `negative_prompt=None` gives zeros (context and pooled) where the pipeline config
  says `force_zeros_for_empty_prompt` (SDXL base: yes; refiner, SD 1.x / 2.x: no, they encode ""). As in
  diffusers, only `negative_prompt=None` zeroes (an explicit "" is encoded; `negative_prompt_2` alone does not
  count). `text.force_zeros_for_empty_prompt` can be changed.
- a str prompt is a batch of one; lists are batches; a str negative / prompt_2 is repeated over the batch;
  every output is repeated `num_images_per_prompt` times per prompt (prompt-major, as diffusers).
- `clip_skip=k` (diffusers' name; A1111's "Clip skip" k + 1) takes the hidden state k layers earlier: sd1 / sd2
  hidden_states[-(k + 1)] through the final norm, sdxl / refiner hidden_states[-(k + 2)], no norm; the pooled
  embedding is unchanged. It applies to the negative prompt too, as in A1111 and ComfyUI (diffusers 0.42 applies
  it to the positive prompt only, so its CFG subtracts embeddings of two different layers).
- prompts longer than 77 tokens (with the start and end tokens) are truncated, with a warning that says how many
  tokens were dropped and which.
`encode` does not switch off autograd (prompt tuning needs it): call it under `torch.no_grad()` to save memory.

Single files: the family is read off the keys (see keymaps/text.py); each encoder's config is the shipped
official one (minunet.weights CONFIGS) with the widths, depth, vocabulary and positions read off the shapes and
heads = width / 64 (true of every official CLIP text encoder), so any width of a known layout loads; pass
`configs=` (one CLIPTextConfig per encoder) to override. The tokenizer is the folder's `tokenizer*/` when it has
vocabulary files, else the shipped CLIP BPE files with the encoder's pad token (`<|endoftext|>` for CLIP ViT-L,
`!` for the OpenCLIP encoders). Models are built on the meta device and the file's tensors assigned strictly.
"""
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .. import checks
from .io import (CheckpointError, load_folder_weights, load_into, load_safetensors, read_header, read_json,
                 refuse_pickle)
from .precision import resolve_dtype
from ..models.random_init import randomize_
from ..keymaps.text import TEXT_ROOT, convert, count_layers, detect_family, embedder_rows, \
    original_shape, target_shapes
from ..weights import CONFIGS, TOKENIZER

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner")


@dataclass(frozen=True)
class EncoderSpec:
    """One text encoder of a family: where it is in a diffusers folder and in a single file, and how it is read."""
    subfolder: str         # in a diffusers folder
    tokenizer: str         # its tokenizer's subfolder
    projection: bool       # CLIPTextModelWithProjection: gives the pooled `text_embeds` (keeps `text_projection`)
    layer: str             # "last": last_hidden_state (after final_layer_norm); "penultimate": hidden_states[-2]
    reads: str             # which text it encodes: "prompt" or "prompt_2"
    pad_token: str         # of the official tokenizer config
    config: str            # the official config shipped in minunet.weights CONFIGS, used for single files
    prefix: str            # of its keys in an original single file
    layout: str            # of those keys: "clip" or "open_clip" (keymaps/text.py)
    drop_last_layer: bool = False  # SD 2.x conditions on the penultimate block: diffusers' encoder has one fewer


CLIP_L_PAD, OPEN_CLIP_PAD = "<|endoftext|>", "!"  # OpenAI CLIP pads with its end token, OpenCLIP with "!" (id 0)
# One row per text encoder, in the order of the diffusers folder (text_encoder, text_encoder_2).
SPECS = {
    "sd1": (EncoderSpec("text_encoder", "tokenizer", False, "last", "prompt", CLIP_L_PAD,
                        "stable-diffusion-v1-5/text_encoder", "cond_stage_model.transformer.", "clip"),),
    # SD 2.x: the 24th block and the projection are in the file but unused (OpenCLIP "penultimate" layer);
    # diffusers drops the same keys (single_file_utils.SD_2_TEXT_ENCODER_KEYS_TO_IGNORE) into a 23-block encoder.
    "sd2": (EncoderSpec("text_encoder", "tokenizer", False, "last", "prompt", OPEN_CLIP_PAD,
                        "stable-diffusion-2-1/text_encoder", "cond_stage_model.model.", "open_clip",
                        drop_last_layer=True),),
    "sdxl": (EncoderSpec("text_encoder", "tokenizer", False, "penultimate", "prompt", CLIP_L_PAD,
                         "stable-diffusion-xl-base-1.0/text_encoder", "conditioner.embedders.0.transformer.", "clip"),
             EncoderSpec("text_encoder_2", "tokenizer_2", True, "penultimate", "prompt_2", OPEN_CLIP_PAD,
                         "stable-diffusion-xl-base-1.0/text_encoder_2", "conditioner.embedders.1.model.",
                         "open_clip")),
    # the refiner's one encoder reads `prompt`: diffusers' img2img pipeline zips [prompt, prompt_2] with its one encoder
    "sdxl-refiner": (EncoderSpec("text_encoder_2", "tokenizer_2", True, "penultimate", "prompt", OPEN_CLIP_PAD,
                                 "stable-diffusion-xl-refiner-1.0/text_encoder_2", "conditioner.embedders.0.model.",
                                 "open_clip"),),
}
# `force_zeros_for_empty_prompt` of the official model_index.json files (single files have none)
FORCE_ZEROS = {"sd1": False, "sd2": False, "sdxl": True, "sdxl-refiner": False}
# keys of a diffusers text-encoder file (diffusers-file names) that are not parameters: recomputed
FOLDER_IGNORED = {"text_model.embeddings.position_ids"}


class TextEmbeddings(NamedTuple):
    context: torch.Tensor                    # (B * n, 77, context_dim): the UNet's cross-attention input
    pooled: torch.Tensor | None              # (B * n, pooled_dim): SDXL `text_embeds`; None for SD 1.x / 2.x
    negative_context: torch.Tensor | None    # None when guidance=False
    negative_pooled: torch.Tensor | None


class TextConditioner(nn.Module):
    """The tokenizers and text encoders of one pipeline, and `encode` (see the module docstring)."""

    def __init__(self, family, encoders, tokenizers, *, force_zeros_for_empty_prompt=None, source=None):
        super().__init__()
        if family not in SPECS:
            raise ValueError(f"unknown text family {family!r}; expected one of {FAMILIES}")
        if not len(encoders) == len(tokenizers) == len(SPECS[family]):
            raise ValueError(f"{family} has {len(SPECS[family])} text encoders; got {len(encoders)} encoders and "
                             f"{len(tokenizers)} tokenizers")
        for i, (encoder, tokenizer) in enumerate(zip(encoders, tokenizers)):
            rows = encoder.config.vocab_size
            if len(tokenizer) > rows:  # a token id >= rows would be an IndexError at the first prompt
                where = f"{source}: " if source is not None else ""
                raise CheckpointError(f"{where}{SPECS[family][i].subfolder}: the token embedding has {rows} rows "
                                      f"but the tokenizer has {len(tokenizer)} tokens; expected at least one row per token")
        self.family = family
        self.specs = SPECS[family]
        self.encoders = nn.ModuleList(encoders)
        self.tokenizers = list(tokenizers)
        self.force_zeros_for_empty_prompt = (FORCE_ZEROS[family] if force_zeros_for_empty_prompt is None
                                             else force_zeros_for_empty_prompt)

    @property
    def context_dim(self):
        return sum(e.config.hidden_size for e in self.encoders)

    @property
    def pooled_dim(self):
        dims = [e.config.projection_dim for e, s in zip(self.encoders, self.specs) if s.projection]
        return dims[0] if dims else None

    # ---- loading
    @classmethod
    def from_pretrained(cls, folder, *, dtype=None, device=None, variant=None, encoders=None):
        """From a diffusers pipeline folder (text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/,
        model_index.json). `variant="fp16"` reads model.fp16.safetensors. Pickle .bin weights are refused.
        `encoders`: {"text_encoder" | "text_encoder_2": an already loaded model} to use instead of loading that one
        (the same object, shared; its shapes must be the folder's)."""
        folder, dtype = Path(folder), resolve_dtype(dtype, device)  # "auto": loading/precision.py
        refuse_pickle(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (a single .safetensors file goes to from_single_file)")
        index = folder / "model_index.json"
        info = read_json(index, "model_index") if index.is_file() else {}
        family = folder_family(folder, info)
        shared = check_shared(encoders, family, folder)
        encoders = [shared_folder_encoder(shared[s.subfolder], folder / s.subfolder, s.projection)
                    if s.subfolder in shared else
                    load_encoder_folder(folder / s.subfolder, s.projection, dtype=dtype, device=device, variant=variant)
                    for s in SPECS[family]]
        tokenizers = [load_tokenizer(folder / s.tokenizer, s.pad_token) for s in SPECS[family]]
        # diffusers' SDXL pipelines default to True when model_index.json does not say
        force = info.get("force_zeros_for_empty_prompt", family.startswith("sdxl"))
        return cls(family, encoders, tokenizers, force_zeros_for_empty_prompt=force, source=folder)

    @classmethod
    def from_single_file(cls, path, *, dtype=None, device=None, configs=None, encoders=None):
        """From an original checkpoint (`cond_stage_model.*` / `conditioner.*`); other components' keys are skipped.
        `configs`: one CLIPTextConfig per encoder instead of the shipped configs fitted to the shapes.
        `encoders`: {"text_encoder" | "text_encoder_2": an already loaded model} used (shared) instead of loading
        that encoder's tensors from the file; its shapes must be the file's."""
        dtype = resolve_dtype(dtype, device)  # "auto": loading/precision.py
        header, _, _ = read_header(path)
        family = detect_family(header)
        if family is None:
            tops = sorted({".".join(k.split(".")[:2]) for k in header})
            raise CheckpointError(f"{path}: no text encoder in the original layout (expected keys under "
                                  "'cond_stage_model.transformer.', 'cond_stage_model.model.' or "
                                  f"'conditioner.embedders.N.'; found {tops[:12]}). A diffusers text_encoder file "
                                  "goes with its config.json in a pipeline folder: use from_pretrained.")
        if configs is not None and len(configs) != len(SPECS[family]):
            raise ValueError(f"{path}: {family} has {len(SPECS[family])} text encoders, "
                             f"got {len(configs)} configs")
        shapes = {k: e["shape"] for k, e in header.items()}
        plans = [plan_embedder(path, shapes, spec, None if configs is None else configs[i])
                 for i, spec in enumerate(SPECS[family])]
        claimed = {emb.prefix + k for emb, (rows, ignored, _) in zip(SPECS[family], plans)
                   for k in [r.original for r in rows] + ignored}
        unknown = sorted(k for k in header if k.startswith(TEXT_ROOT[family]) and k not in claimed)
        if unknown:
            raise CheckpointError(f"{path}: {len(unknown)} unknown keys under '{TEXT_ROOT[family]}' for a {family} "
                                  "text conditioner: " + ", ".join(unknown[:15])
                                  + (" ..." if len(unknown) > 15 else ""))
        shared = check_shared(encoders, family, path)
        skip = [spec.subfolder in shared for spec in SPECS[family]]
        tensors = load_safetensors(path, keys={emb.prefix + r.original for emb, (rows, _, _), s in
                                               zip(SPECS[family], plans, skip) if not s for r in rows})
        encoders = []
        for emb, (rows, _, model) in zip(SPECS[family], plans):
            if emb.subfolder in shared:
                encoders.append(check_fits(shared[emb.subfolder], model, f"{path} ({emb.prefix}*)"))
                continue
            state = {t: v for r in rows for t, v in zip(r.targets, convert(r, tensors[emb.prefix + r.original]))}
            encoders.append(assign(model, state, path, dtype, device))
        tokenizers = [load_tokenizer(None, s.pad_token) for s in SPECS[family]]
        return cls(family, encoders, tokenizers, source=path)

    @classmethod
    def tiny(cls, family="sd1", seed=0, *, widths=None, layers=2, dtype=None, device=None):
        """Random text encoders of the family's structure at tiny widths (default 64; SDXL (32, 64) so the two
        encoders differ), head size 32, the real vocabulary and 77 positions; every parameter is random."""
        widths = widths or ((32, 64) if family == "sdxl" else (64,))
        g = torch.Generator().manual_seed(seed)
        encoders = []
        for i, (spec, width) in enumerate(zip(SPECS[family], widths)):
            model = (CLIPTextModelWithProjection if spec.projection else CLIPTextModel)(
                tiny_text_config(family, i, width=width, layers=layers))
            encoders.append(randomize_(model, generator=g).to(device=device, dtype=dtype).eval())
        return cls(family, encoders, [load_tokenizer(None, s.pad_token) for s in SPECS[family]])

    # ---- encoding
    def tokenize(self, texts, index=0):
        """Token ids (B, 77) for encoder `index` (see `tokenize`)."""
        return tokenize(self.tokenizers[index], texts, self.encoders[index].config.max_position_embeddings)

    def encode(self, prompt, negative_prompt=None, prompt_2=None, negative_prompt_2=None, *, guidance=True,
               num_images_per_prompt=1, clip_skip=None) -> TextEmbeddings:
        """Prompt embeddings as diffusers' encode_prompt makes them for this family (see the module docstring)."""
        prompts = as_batch(prompt, "prompt")
        n = len(prompts)
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an int >= 1, got {num_images_per_prompt!r}")
        skip = self._check_clip_skip(clip_skip)
        context, pooled = self._encode({"prompt": prompts, "prompt_2": as_batch(prompt_2 or prompt, "prompt_2", n)},
                                       skip)
        negative_context = negative_pooled = None
        if guidance and negative_prompt is None and self.force_zeros_for_empty_prompt:
            negative_context = torch.zeros_like(context)
            negative_pooled = None if pooled is None else torch.zeros_like(pooled)
        elif guidance:
            negative = negative_prompt or ""
            negative_context, negative_pooled = self._encode({
                "prompt": as_batch(negative, "negative_prompt", n),
                "prompt_2": as_batch(negative_prompt_2 or negative, "negative_prompt_2", n)}, skip)

        def repeat(t):  # each prompt's rows stay together: p0, p0, p1, p1, ...
            return None if t is None else t.repeat_interleave(num_images_per_prompt, dim=0)

        return TextEmbeddings(repeat(context), repeat(pooled), repeat(negative_context), repeat(negative_pooled))

    def _check_clip_skip(self, clip_skip):
        """None or 0 -> 0; otherwise an int that leaves every encoder at least one layer to run."""
        if clip_skip is None:
            return 0
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0:
            raise ValueError(f"clip_skip must be None or an int >= 0, got {clip_skip!r}")
        for spec, encoder in zip(self.specs, self.encoders):
            layers = encoder.config.num_hidden_layers
            most = layers - 1 if spec.layer == "last" else layers - 2  # sdxl already starts one layer early
            if clip_skip > most:
                raise ValueError(f"clip_skip={clip_skip} is too large for {spec.subfolder} ({layers} layers, "
                                 f"{self.family} reads {'its last' if spec.layer == 'last' else 'its penultimate'} "
                                 f"hidden state): at most {most}")
        return clip_skip

    def _encode(self, texts, clip_skip=0):
        contexts, pooled = [], None
        for i, (spec, encoder) in enumerate(zip(self.specs, self.encoders)):
            ids = self.tokenize(texts[spec.reads], i).to(encoder.device)
            out = encoder(ids, output_hidden_states=spec.layer == "penultimate" or clip_skip > 0)
            if spec.layer == "penultimate":  # hidden_states: the embeddings, then each layer's output
                contexts.append(out.hidden_states[-2 - clip_skip])
            elif clip_skip:  # an earlier layer, through the final LayerNorm like the last one
                norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 4 nests it
                contexts.append(norm(out.hidden_states[-1 - clip_skip]))
            else:
                contexts.append(out.last_hidden_state)
            if spec.projection:
                pooled = out.text_embeds  # projected final-norm state at the first end token
        dtype = self.encoders[-1].dtype  # diffusers casts to the (last) text encoder's dtype
        return torch.cat([c.to(dtype) for c in contexts], dim=-1), pooled


def load_text_conditioner(source, *, dtype=None, device=None, variant=None, configs=None):
    """A diffusers folder or an original .safetensors file -> TextConditioner."""
    source = Path(source)
    refuse_pickle(source)
    if source.is_dir():
        return TextConditioner.from_pretrained(source, dtype=dtype, device=device, variant=variant)
    return TextConditioner.from_single_file(source, dtype=dtype, device=device, configs=configs)


def as_batch(texts, name, n=None):
    """A str or a list of str -> list; a str is repeated to `n`; a list must have `n` entries."""
    if isinstance(texts, str):
        return [texts] * (n or 1)
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{name} must be a str or a list of str, got {type(texts).__name__}")
    if n is not None and len(texts) != n:
        raise ValueError(f"{name} has {len(texts)} entries but the prompt batch has {n}")
    return list(texts)


# ---- tokenizers
def tokenize(tokenizer, texts, length=77):
    """Token ids (B, length): start, BPE tokens, end, then pad; longer texts are truncated (the end token kept)
    with a warning that says how many tokens were dropped and which."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    for text, full in zip(texts, tokenizer(texts, verbose=False).input_ids):
        if len(full) > length:
            dropped = full[length - 1:-1]
            warnings.warn(f"prompt longer than CLIP's {length} tokens: {len(dropped)} tokens dropped "
                          f"({tokenizer.decode(dropped)!r}) from {text[:60]!r}", stacklevel=2)
    return ids


TOKENIZER_JSON = ("vocab.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_tokenizer(folder=None, pad_token="<|endoftext|>"):
    """The folder's CLIP tokenizer if it holds vocabulary files, else the shipped CLIP BPE files (TOKENIZER)
    with this pad token and 77 positions; nothing is fetched. A folder's JSON files are checked first, and
    anything transformers then refuses is one CheckpointError naming the folder."""
    if folder is not None and any((Path(folder) / f).is_file() for f in ("vocab.json", "tokenizer.json")):
        for name in TOKENIZER_JSON:
            if (Path(folder) / name).is_file():
                read_json(Path(folder) / name, "tokenizer file")
        try:
            return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # transformers raises anything from KeyError to OSError on a broken folder
            raise CheckpointError(f"{folder}: not a usable CLIP tokenizer ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return CLIPTokenizer.from_pretrained(str(TOKENIZER), pad_token=pad_token, model_max_length=77,
                                         local_files_only=True)


# ---- configs and models
def shipped_config(family, index=0):
    """The official CLIPTextConfig of encoder `index` of `family` (from minunet.weights CONFIGS)."""
    return spec_config(SPECS[family][index])


def spec_config(spec):
    return CLIPTextConfig.from_json_file(str(CONFIGS / spec.config / "config.json"))


def clip_config(d, source):
    """A CLIPTextConfig from a config.json dict, with its sizes checked (names the file and the field)."""
    try:
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "max_position_embeddings"):
            if f in d:
                checks.integer(f, d[f], 1)
        if "hidden_size" in d and "num_attention_heads" in d:
            checks.divisible("hidden_size", d["hidden_size"], d["num_attention_heads"], "num_attention_heads")
        if "layer_norm_eps" in d:
            checks.number("layer_norm_eps", d["layer_norm_eps"], 0, low_open=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: text encoder config not supported: {e}") from None
    try:
        return CLIPTextConfig.from_dict(d)
    except Exception as e:  # transformers' own validation errors have their own types
        raise CheckpointError(f"{source}: text encoder config not supported ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[-1]})") from None


def tiny_text_config(family, index=0, *, width=64, layers=2, head_size=32):
    """The official config of that encoder at a tiny width and depth (activation, eps, token ids kept)."""
    base = shipped_config(family, index).to_dict()
    return CLIPTextConfig.from_dict({**base, "hidden_size": width, "intermediate_size": 4 * width,
                                     "num_hidden_layers": layers, "num_attention_heads": max(1, width // head_size),
                                     "projection_dim": width, "dtype": None})  # dtype: not the official fp16


def text_config_from_shapes(shapes, base, source):
    """`base` with the sizes read off `shapes` ({diffusers-file name: shape}); heads = width / 64."""
    def need(key):
        if key not in shapes:
            raise CheckpointError(f"{source}: text encoder without '{key}' (after mapping)")
        return shapes[key]

    vocab, width = need("text_model.embeddings.token_embedding.weight")
    layers = len({m.group(1) for k in shapes if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
    updates = dict(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                   max_position_embeddings=need("text_model.embeddings.position_embedding.weight")[0],
                   intermediate_size=need("text_model.encoder.layers.0.mlp.fc1.weight")[0],
                   num_attention_heads=max(1, width // 64),  # head size 64 in every official CLIP text encoder
                   dtype=None)  # the tensors' dtype is the file's (or the caller's), not the official config's
    if "text_projection.weight" in shapes:
        updates["projection_dim"] = shapes["text_projection.weight"][0]
    return CLIPTextConfig.from_dict({**base.to_dict(), **updates})


def build(config, projection):
    """A transformers CLIP text model on the meta device (no memory, no init) to assign tensors into."""
    with torch.device("meta"):
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def file_name(key):
    """A CLIP text model's state-dict key as the official diffusers files name it (`text_model.*`,
    `text_projection.weight`): transformers >= 5.6 has CLIPTextModel without the `text_model.` level."""
    return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key


def file_names(model):
    """{diffusers-file name: tensor} of a model's state dict."""
    return {file_name(k): v for k, v in model.state_dict().items()}


def module_names(model, state):
    """{diffusers-file name: tensor} -> the model's own state-dict names (the inverse of file_names)."""
    if any(k.startswith("text_model.") for k in model.state_dict()):
        return dict(state)
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def assign(model, state, source, dtype=None, device=None):
    """Load {diffusers-file name: tensor} strictly into a meta-built model; recompute position_ids."""
    expected = {k: list(v.shape) for k, v in file_names(model).items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"'{k}': expected {expected[k]}, found {list(state[k].shape)}"
             for k in sorted(set(expected) & set(state)) if list(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:  # named as in the file (`text_model.*`), before any renaming
        raise CheckpointError(f"{source}: does not fit {type(model).__name__}({model.config.hidden_size} wide, "
                              f"{model.config.num_hidden_layers} blocks) -- {len(missing)} missing keys: "
                              f"{', '.join(missing[:15])}; {len(unexpected)} unexpected keys: "
                              f"{', '.join(unexpected[:15])}; wrong shapes: {', '.join(wrong[:10]) or 'none'}")
    load_into(model, module_names(model, state), source, dtype, device)
    emb = getattr(model, "text_model", model).embeddings
    weight = emb.position_embedding.weight  # positions 0..76 (the files' copies can be F16 or missing)
    emb.register_buffer("position_ids", torch.arange(weight.shape[0], device=weight.device).expand(1, -1),
                        persistent=False)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: tensors left unloaded in the text encoder: {left}")
    return model.eval()


def plan_embedder(path, shapes, spec, config=None):
    """(rows, ignored keys, meta model) for one encoder of a single file, after checking that every key the
    map needs is there with the shape the model needs (errors name the file's key)."""
    p = spec.prefix
    sub = {k[len(p):]: s for k, s in shapes.items() if k.startswith(p)}
    n_file = count_layers(sub, spec.layout)
    if n_file == 0:
        raise CheckpointError(f"{path}: no transformer blocks under '{p}'")
    with_text_model = any(k.startswith("text_model.") for k in sub)
    rows, ignored = embedder_rows(spec, n_file, text_model_prefix=with_text_model)
    missing = [p + r.original for r in rows if r.original not in sub]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} missing text-encoder keys: " + ", ".join(missing[:15])
                              + (" ..." if len(missing) > 15 else ""))
    found = {t: s for r in rows for t, s in zip(r.targets, target_shapes(r, sub[r.original]))}
    config = config or text_config_from_shapes(found, spec_config(spec), path)
    model = build(config, spec.projection)
    expected = {k: list(v.shape) for k, v in file_names(model).items()}
    for r in rows:
        want = original_shape(r, expected) if r.targets[0] in expected else None
        if want != list(sub[r.original]):
            raise CheckpointError(f"{path}: wrong shape for '{p}{r.original}': expected {want}, found "
                                  f"{list(sub[r.original])} (for a text encoder of width {config.hidden_size}, "
                                  f"{config.num_hidden_layers} blocks, MLP {config.intermediate_size})")
    return rows, ignored, model


def check_shared(encoders, family, source):
    """{subfolder: model} of the encoders given to share, after checking that the family has them."""
    shared = dict(encoders or {})
    names = [s.subfolder for s in SPECS[family]]
    unknown = sorted(set(shared) - set(names))
    if unknown:
        raise ValueError(f"{source}: a {family} pipeline has text encoders {names}; cannot share {unknown}")
    return shared


def check_fits(model, meta, source):
    """A given (shared) encoder must have exactly the tensors, by name and shape, that the source would load."""
    want = {k: list(v.shape) for k, v in file_names(meta).items()}
    have = {k: list(v.shape) for k, v in file_names(model).items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ValueError(f"{source}: the shared text encoder does not fit: "
                         + "; ".join(f"'{k}': expected {want.get(k)}, found {have.get(k)}" for k in diff[:6]))
    return model


def folder_family(folder, info):
    """The family of a diffusers folder: which text encoders it has (model_index.json may mark one absent),
    and for a single encoder its activation (OpenCLIP's gelu -> sd2; OpenAI CLIP's quick_gelu -> sd1)."""
    def present(name):
        listed = info.get(name, ["", ""])
        return listed[0] is not None and (folder / name / "config.json").is_file()

    one, two = present("text_encoder"), present("text_encoder_2")
    if one and two:
        return "sdxl"
    if two:
        return "sdxl-refiner"
    if one:
        act = read_json(folder / "text_encoder" / "config.json", "text encoder config").get("hidden_act")
        return "sd2" if act == "gelu" else "sd1"
    raise CheckpointError(f"{folder}: no text_encoder/config.json nor text_encoder_2/config.json: not a diffusers "
                          "pipeline folder with text encoders")


def shared_folder_encoder(model, sub, projection):
    """A given model in place of the `text_encoder*/` folder `sub`, after checking it fits its config.json."""
    if not (sub / "config.json").is_file():
        raise CheckpointError(f"{sub}: no config.json")
    return check_fits(model, build(CLIPTextConfig.from_json_file(str(sub / "config.json")), projection), sub)


def load_encoder_folder(sub, projection, *, dtype=None, device=None, variant=None):
    """One diffusers `text_encoder*/` folder: config.json + model[.variant].safetensors (or sharded)."""
    if not (sub / "config.json").is_file():
        raise CheckpointError(f"{sub}: no config.json")
    state, file = load_folder_weights(sub, "model", variant)
    state = {file_name(k): v for k, v in state.items() if file_name(k) not in FOLDER_IGNORED}
    config = clip_config(read_json(sub / "config.json", "text encoder config"), sub / "config.json")
    return assign(build(config, projection), state, file, dtype, device)
