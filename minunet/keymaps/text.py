"""Text-encoder key maps: the original single-file layouts -> transformers' CLIP names, as data.

The target names are those of a diffusers folder's `text_encoder*/model.safetensors` (`text_model.*` and, for
the projecting encoder, `text_projection.weight`; the manifests in weights/manifests/diffusers/). Two layouts
occur inside original checkpoints:

- "clip": OpenAI CLIP ViT-L as transformers saves it (SD 1.x `cond_stage_model.transformer.`, SDXL
  `conditioner.embedders.0.transformer.`): the names are already transformers'; some fine-tunes drop `text_model.`.
- "open_clip": OpenCLIP (SD 2.x `cond_stage_model.model.`, SDXL bigG `conditioner.embedders.1.model.`, the
  refiner's bigG `conditioner.embedders.0.model.`): renames, the fused q/k/v projection split in three, and
  `text_projection` transposed (OpenCLIP computes `x @ P`, a Linear computes `x @ W.T`; P is square in every
  official model, so a missing transpose would load without complaint and compute the wrong pooled vector).

Keys are matched whole: a row names one original key and its target(s), never a substring.
"""
import re
from dataclasses import dataclass

# Which single-file family the text keys say, first match wins (SDXL base also holds `embedders.0.transformer.`).
DETECT = [("conditioner.embedders.1.model.", "sdxl"), ("conditioner.embedders.0.model.", "sdxl-refiner"),
          ("cond_stage_model.model.", "sd2"), ("cond_stage_model.transformer.", "sd1")]
# Everything under this prefix is text conditioning: a key there that no row consumes is an error.
TEXT_ROOT = {"sd1": "cond_stage_model.", "sd2": "cond_stage_model.", "sdxl": "conditioner.",
             "sdxl-refiner": "conditioner."}


# transformers names, shared by both layouts (relative to `text_model.` and `text_model.encoder.layers.{i}.`)
CLIP_TOP = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
            "final_layer_norm.weight", "final_layer_norm.bias"]
CLIP_BLOCK = [f"{m}.{p}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                   "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")]
# Keys that are in the files, not in the model, and skipped on purpose.
CLIP_IGNORED = ["embeddings.position_ids"]  # [1, 77] arange, I64 or F16 (SDXL): recomputed, never trusted
OPEN_CLIP_IGNORED = ["logit_scale"]         # the contrastive-loss temperature, unused for conditioning

TRANSPOSE = "transpose"  # op tag: [d, proj] (used as x @ P) -> Linear weight [proj, d]
SPLIT_QKV = "split_qkv"  # op tag: [3d, ...] = q; k; v stacked along dim 0 (torch MultiheadAttention's in_proj)

OPEN_CLIP_TOP = [  # (original, transformers, op)
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight", None),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight", None),  # a bare [77, d] parameter
    ("ln_final.weight", "text_model.final_layer_norm.weight", None),
    ("ln_final.bias", "text_model.final_layer_norm.bias", None),
]
OPEN_CLIP_PROJECTION = ("text_projection", "text_projection.weight", TRANSPOSE)
OPEN_CLIP_BLOCK = [  # inside transformer.resblocks.{i} -> text_model.encoder.layers.{i}
    ("attn.in_proj_weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
     SPLIT_QKV),
    ("attn.in_proj_bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), SPLIT_QKV),
    ("attn.out_proj.weight", "self_attn.out_proj.weight", None),
    ("attn.out_proj.bias", "self_attn.out_proj.bias", None),
    ("ln_1.weight", "layer_norm1.weight", None), ("ln_1.bias", "layer_norm1.bias", None),
    ("ln_2.weight", "layer_norm2.weight", None), ("ln_2.bias", "layer_norm2.bias", None),
    ("mlp.c_fc.weight", "mlp.fc1.weight", None), ("mlp.c_fc.bias", "mlp.fc1.bias", None),  # GELU between
    ("mlp.c_proj.weight", "mlp.fc2.weight", None), ("mlp.c_proj.bias", "mlp.fc2.bias", None),
]
LAYER_PATTERN = {"clip": r"^(?:text_model\.)?encoder\.layers\.(\d+)\.",
                 "open_clip": r"^transformer\.resblocks\.(\d+)\."}


@dataclass(frozen=True)
class Row:
    original: str        # key relative to the embedder prefix
    targets: tuple       # transformers key(s); three for a split q/k/v
    op: str | None       # None, TRANSPOSE or SPLIT_QKV


def detect_family(keys):
    """'sd1', 'sd2', 'sdxl' or 'sdxl-refiner' from the text keys of a whole checkpoint, or None."""
    for prefix, family in DETECT:
        if any(k.startswith(prefix) for k in keys):
            return family
    return None


def count_layers(keys, layout):
    """Number of transformer blocks among `keys` (relative to the embedder prefix)."""
    found = {int(m.group(1)) for k in keys if (m := re.match(LAYER_PATTERN[layout], k))}
    return max(found) + 1 if found else 0


def embedder_rows(embedder, n_file_layers, text_model_prefix=True):
    # embedder: a minunet.loading.text.EncoderSpec (its layout, projection and drop_last_layer)
    """(rows, ignored original keys) for one encoder whose file holds `n_file_layers` blocks."""
    n = n_file_layers - 1 if embedder.drop_last_layer else n_file_layers
    if embedder.layout == "clip":
        head = "text_model." if text_model_prefix else ""
        names = CLIP_TOP + [f"encoder.layers.{i}.{b}" for i in range(n) for b in CLIP_BLOCK]
        rows = [Row(head + name, ("text_model." + name,), None) for name in names]
        ignored = [head + k for k in CLIP_IGNORED]
        ignored += [f"{head}encoder.layers.{i}.{b}" for i in range(n, n_file_layers) for b in CLIP_BLOCK]
    else:
        top = OPEN_CLIP_TOP + ([OPEN_CLIP_PROJECTION] if embedder.projection else [])
        rows = [Row(o, (t,), op) for o, t, op in top]
        for i in range(n):
            for o, t, op in OPEN_CLIP_BLOCK:
                t = t if isinstance(t, tuple) else (t,)
                layer = f"text_model.encoder.layers.{i}."
                rows.append(Row(f"transformer.resblocks.{i}.{o}", tuple(layer + x for x in t), op))
        ignored = list(OPEN_CLIP_IGNORED) + ([] if embedder.projection else [OPEN_CLIP_PROJECTION[0]])
        ignored += [f"transformer.resblocks.{i}.{o}" for i in range(n, n_file_layers) for o, _, _ in OPEN_CLIP_BLOCK]
    sources, targets = [r.original for r in rows], [t for r in rows for t in r.targets]
    assert len(set(sources)) == len(sources) and len(set(targets)) == len(targets), "text key map not one-to-one"
    assert not set(sources) & set(ignored), "text key map: a key is both mapped and ignored"
    return rows, ignored


def original_shape(row, target_shapes):
    """The shape the original key must have, given the transformers shapes of its target(s)."""
    first = list(target_shapes[row.targets[0]])
    if row.op == SPLIT_QKV:
        return [3 * first[0]] + first[1:]
    if row.op == TRANSPOSE:
        return first[::-1]
    return first


def target_shapes(row, shape):
    """The transformers shape(s) an original tensor of `shape` maps to (the inverse of original_shape)."""
    shape = list(shape)
    if row.op == SPLIT_QKV:
        return [[shape[0] // 3] + shape[1:]] * 3
    if row.op == TRANSPOSE:
        return [shape[::-1]]
    return [shape]


def convert(row, tensor):
    """The tensor(s) of one row: q/k/v as zero-copy views of the fused one; the projection transposed (a copy)."""
    if row.op == SPLIT_QKV:
        return tensor.chunk(3, dim=0)
    if row.op == TRANSPOSE:
        return (tensor.T.contiguous(),)
    return (tensor,)
