"""LoRA: low-rank updates of a model's Linear and Conv2d layers, read from the files people have.

One LoRA layer on a module with weight W (out, in[, kh, kw]) computes, for an input x,

    W x + scale * (alpha / rank) * up(down(x))       down: (rank, in[, kh, kw]), up: (out, rank[, 1, 1])

added by a forward hook on the module (the "unmerged" form, which trains), or merged into W by `fuse()`
(`unfuse()` puts back the very tensor that was there: bit for bit). `scale` is the user's multiplier (A1111's
`<lora:name:0.8>`, diffusers' adapter weight), alpha / rank the file's own factor (1 when the file has no alpha).
On a 3x3 conv (kohya "LoCon") down is a 3x3 conv with the module's stride and padding and up a 1x1 conv.

Formats, recognised per key by whole prefixes and suffixes (tables below), never by substring replacement:
- kohya / A1111: `lora_unet_{name}.lora_down.weight`, `.lora_up.weight`, `.alpha`; `lora_te_` (SD 1.x / 2.x),
  `lora_te1_` / `lora_te2_` (SDXL's CLIP-L / bigG). `name` is a module path with "_" for ".": SD 1.x files use
  diffusers' paths (`down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`), SDXL files the original
  layout's (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`, `input_blocks_1_0_in_layers_2`), text encoders
  transformers' (`text_model_encoder_layers_0_self_attn_q_proj`). Since module names contain "_" themselves
  (`to_q`, `transformer_blocks`), a name is not split back: it is looked up in a table of every real module path
  written that way (and, for the UNet, of every original-layout path from `keymaps.unet.unet_key_map`).
- diffusers / PEFT: `unet.{path}.lora_A.weight` / `.lora_B.weight` (also diffusers' older `.lora.down/up.weight`
  and `.lora_linear_layer.down/up.weight`), `text_encoder.*`, `text_encoder_2.*`; alpha from `.alpha` keys or
  the file's `lora_adapter_metadata` (PEFT's `lora_alpha`, `alpha_pattern`, `use_rslora`).
A key that fits no row, a module the model does not have, a down without its up, or a wrong shape is an error
listing the keys: nothing is applied then.
"""
import json
import re
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..keymaps.unet import unet_key_map
from ..models.unet import UNet
from .io import load_safetensors, read_header

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")
# (format, {key prefix: component}, {key suffix: part})
FORMATS = [
    ("kohya", {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
               "lora_te2_": "text_encoder_2"},
     {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}),
    ("peft", {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"},
     {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up",
      ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up", ".alpha": "alpha"}),
]
METADATA_KEY = "lora_adapter_metadata"  # diffusers' JSON of PEFT LoraConfig fields, keyed "{component}.{field}"
# module -> [the weight tensor before any fuse, [fused LoraLayers in order]]; see LoraLayer.fuse
_FUSED = weakref.WeakKeyDictionary()


def parse_key(key):
    """'lora_unet_x_y.lora_down.weight' -> ('kohya', 'unet', 'x_y', 'down'), or None when no row fits."""
    for fmt, prefixes, suffixes in FORMATS:
        for prefix, component in prefixes.items():
            if not key.startswith(prefix):
                continue
            for suffix, part in suffixes.items():
                if key.endswith(suffix) and len(key) > len(prefix) + len(suffix):
                    return fmt, component, key[len(prefix):-len(suffix)], part
    return None


def lora_targets(model):
    """Paths of the modules a LoRA can update: every Linear and Conv2d (groups 1)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


def module_names(model, fmt):
    """{name as a file of format `fmt` writes it: module path} for every LoRA target of `model`."""
    paths = lora_targets(model)
    if fmt == "peft":
        return {p: p for p in paths}
    table = {}
    for p in paths:
        if table.setdefault(p.replace(".", "_"), p) != p:
            raise AssertionError(f"two modules flatten to the same kohya name: {table[p.replace('.', '_')]}, {p}")
    if isinstance(model, UNet):  # SDXL kohya files name the original layout's modules
        originals = unet_key_map(list(model.state_dict()), model.config)
        known = set(paths)
        for orig, ours in originals.items():
            module, leaf = orig.rpartition(".")[0], ours.rpartition(".")[0]
            if ours.endswith(".weight") and leaf in known and table.setdefault(module.replace(".", "_"), leaf) != leaf:
                raise AssertionError(f"kohya name {module} means both {table[module.replace('.', '_')]} and {leaf}")
    return table


class LoraLayer(nn.Module):
    """scale * alpha / rank * up(down(x)) on one Linear or Conv2d `target` (held by reference, not registered)."""

    def __init__(self, target, down, up, alpha=None):
        super().__init__()
        self.down, self.up = nn.Parameter(down), nn.Parameter(up)
        self.rank = down.shape[0]
        self.alpha = float(self.rank if alpha is None else alpha)
        self.scale = 1.0  # the user's multiplier (Lora.scale)
        self.target = [target]  # a list: not a submodule, so the LoRA's state dict holds its own tensors only
        self.hook = None

    @property
    def factor(self):
        return self.scale * self.alpha / self.rank

    def forward(self, x):
        t = self.target[0]
        # the LoRA's tensors follow the input (a model moved by CPU offload; no-ops otherwise), x their dtype
        down, up = self.down.to(x.device), self.up.to(x.device)
        x = x.to(down.dtype)
        if isinstance(t, nn.Conv2d):  # down: a conv like the target's (kernel, stride, padding), up: 1x1
            h = F.conv2d(x, down, None, t.stride, t.padding, t.dilation)
            return F.conv2d(h, up) * self.factor
        return F.linear(F.linear(x, down), up) * self.factor

    def delta(self):
        """factor * up @ down as a weight-shaped float32 tensor (out, in[, kh, kw])."""
        up, down = self.up.float(), self.down.float()
        if down.ndim == 4:
            return torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) * self.factor
        return (up @ down) * self.factor

    def _hook(self, module, args, output):
        return output + self(args[0]).to(output.dtype)

    def attach(self):
        if self.hook is None:
            self.hook = self.target[0].register_forward_hook(self._hook)

    def detach(self):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    @torch.no_grad()
    def fuse(self):
        """Merge into the target's weight. The weight before the first fuse is kept: unfusing every layer
        puts that very tensor back (bit for bit), in whatever order they are unfused."""
        self.detach()
        stack = _FUSED.setdefault(self.target[0], [self.target[0].weight.data, []])
        if self not in stack[1]:
            stack[1].append(self)
        _refuse(self.target[0])

    @torch.no_grad()
    def unfuse(self):
        stack = _FUSED.get(self.target[0])
        if stack is not None and self in stack[1]:
            stack[1].remove(self)
            _refuse(self.target[0])

    @property
    def fused(self):
        stack = _FUSED.get(self.target[0])
        return stack is not None and self in stack[1]


def _refuse(module):
    """weight = original + the fused layers' deltas, summed in float32 and rounded once to the weight's dtype."""
    original, layers = _FUSED[module]
    if not layers:
        module.weight.data = original
        del _FUSED[module]
        return
    w = original.float()
    for layer in layers:
        w = w + layer.delta().to(w.device)
    module.weight.data = w.to(original.dtype)


class Lora(nn.Module):
    """One LoRA (a file, or a dict of its tensors) applied to models such as {"unet": unet, "text_encoder": te}.

    Created attached (the hooks add scale * up(down(x))). `scale` can be changed at any time; `fuse()` merges
    into the weights, `unfuse()` restores them exactly, `remove()` takes the LoRA off. Its parameters are the
    LoRA's own (train them with the base model frozen); `save(path)` writes the kohya format.
    """

    def __init__(self, layers, scale=1.0, source="LoRA"):
        super().__init__()
        self.layers = nn.ModuleDict(layers)  # kohya names ("lora_unet_down_blocks_0_...") -> LoraLayer
        self.paths = {}                      # kohya name -> (component, module path)
        self.source = str(source)
        self.scale = scale

    @property
    def scale(self):
        return self._scale

    @scale.setter
    def scale(self, value):
        self._scale = float(value)
        for layer in self.layers.values():
            layer.scale = self._scale
            if layer.fused:
                _refuse(layer.target[0])

    def attach(self):
        for layer in self.layers.values():
            if not layer.fused:
                layer.attach()
        return self

    def fuse(self):
        for layer in self.layers.values():
            layer.fuse()
        return self

    def unfuse(self):
        """Back to the unmerged form (hooks), with the weights exactly as before `fuse`."""
        for layer in self.layers.values():
            layer.unfuse()
        return self.attach()

    @property
    def fused(self):
        return any(layer.fused for layer in self.layers.values())

    def remove(self):
        for layer in self.layers.values():
            layer.unfuse()
            layer.detach()
        return self

    def kohya_state_dict(self):
        """{kohya key: tensor}: `{name}.lora_down.weight`, `.lora_up.weight` and `.alpha` per layer."""
        out = {}
        for name, layer in self.layers.items():
            out[f"{name}.lora_down.weight"] = layer.down.detach().contiguous()
            out[f"{name}.lora_up.weight"] = layer.up.detach().contiguous()
            out[f"{name}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
        return out

    def save(self, path):
        """Write the kohya / A1111 format (names in diffusers' module paths, which A1111 and diffusers read)."""
        import safetensors.torch

        safetensors.torch.save_file(self.kohya_state_dict(), str(path), metadata={"format": "pt"})


def kohya_name(component, path, components):
    """The kohya key stem of a module: lora_unet_ / lora_te_ (one text encoder) / lora_te1_, lora_te2_."""
    two_text = "text_encoder_2" in components and "text_encoder" in components
    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if two_text else "lora_te_",
              "text_encoder_2": "lora_te2_"}[component]
    return prefix + path.replace(".", "_")


def read_lora_file(path):
    """(tensors, PEFT metadata or None) of a .safetensors LoRA (pickle files are refused)."""
    read_header(path)  # validates; refuses pickles with a conversion recipe
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    raw = meta.get(METADATA_KEY)
    try:
        return load_safetensors(path), (json.loads(raw) if raw else None)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its '{METADATA_KEY}' metadata is not JSON ({e})") from None


def _listing(keys, n=20):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def group_keys(tensors, targets, source, ignore=()):
    """{(component, module path): {"down"|"up"|"alpha": (key, tensor)}} for the components in `targets`.
    Keys of components in `ignore` are dropped (returned as a count per component); any other key that
    names no module of `targets` is an error listing them all."""
    names = {}
    groups, unknown, ignored = {}, [], {}
    for key, tensor in tensors.items():
        parsed = parse_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        fmt, component, name, part = parsed
        if component in ignore:
            ignored[component] = ignored.get(component, 0) + 1
            continue
        if component not in targets:
            unknown.append(f"{key} (no {component} here)")
            continue
        if (component, fmt) not in names:
            names[component, fmt] = module_names(targets[component], fmt)
        path = names[component, fmt].get(name)
        if path is None:
            unknown.append(key)
            continue
        slot = groups.setdefault((component, path), {})
        if part in slot:
            raise CheckpointError(f"{source}: keys {slot[part][0]} and {key} both give the {part} of {component} "
                                  f"module {path}")
        slot[part] = (key, tensor)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} LoRA keys name no module of the model (expected kohya "
                              "'lora_unet_/lora_te_/lora_te1_/lora_te2_{module}.lora_down.weight|.lora_up.weight|"
                              ".alpha' or PEFT '{unet|text_encoder|text_encoder_2}.{module}.lora_A.weight|"
                              f".lora_B.weight'; nothing was applied): {_listing(unknown)}")
    return groups, ignored


def _peft_alpha(metadata, component, path, rank):
    """alpha for a PEFT module from diffusers' lora_adapter_metadata (None when the file has none)."""
    if metadata is None or f"{component}.lora_alpha" not in metadata:
        return None
    if metadata.get(f"{component}.use_dora"):
        raise CheckpointError(f"DoRA LoRAs ({component}.use_dora) are not supported")
    alpha = metadata[f"{component}.lora_alpha"]
    for pattern, value in (metadata.get(f"{component}.alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", path):  # PEFT's rule: the pattern matches a path suffix
            alpha = value
    if metadata.get(f"{component}.use_rslora"):  # rank-stabilised: alpha / sqrt(rank) = alpha' / rank
        alpha = alpha * rank ** 0.5
    return alpha


def _fit(tensor, ndim, kernel):
    """A 2-d LoRA matrix on a 1x1 conv gains its (1, 1) kernel; a (r, c, 1, 1) one on a Linear loses it."""
    if tensor.ndim == 2 and ndim == 4 and kernel == (1, 1):
        return tensor[:, :, None, None]
    if tensor.ndim == 4 and ndim == 2 and tuple(tensor.shape[2:]) == (1, 1):
        return tensor[:, :, 0, 0]
    return tensor


def make_layer(module, slot, component, path, source, metadata, dtype):
    """A checked LoraLayer for `module` from its {"down", "up"[, "alpha"]} slot."""
    missing = [p for p in ("down", "up") if p not in slot]
    if missing:
        have = ", ".join(k for k, _ in slot.values())
        raise CheckpointError(f"{source}: {component} module {path} has {have} but no {' / '.join(missing)} weight")
    (down_key, down), (up_key, up) = slot["down"], slot["up"]
    w = module.weight
    kernel = tuple(w.shape[2:])
    down, up = _fit(down, w.ndim, kernel), _fit(up, w.ndim, kernel)
    rank = down.shape[0]
    want_down = (rank, *w.shape[1:])
    want_up = (w.shape[0], rank) + ((1, 1) if w.ndim == 4 else ())
    for key, t, want in ((down_key, down, want_down), (up_key, up, want_up)):
        if tuple(t.shape) != want:
            raise CheckpointError(f"{source}: {key} has shape {list(t.shape)}, but {component} module {path} "
                                  f"(weight {list(w.shape)}) needs {list(want)} for a rank-{rank} LoRA")
    if "alpha" in slot:
        key, a = slot["alpha"]
        if a.numel() != 1:
            raise CheckpointError(f"{source}: {key} must be one number, found shape {list(a.shape)}")
        alpha = float(a.reshape(()))
    else:
        alpha = _peft_alpha(metadata, component, path, rank)
    dtype = w.dtype if dtype is None else dtype
    return LoraLayer(module, down.to(w.device, dtype).clone(), up.to(w.device, dtype).clone(), alpha)


def load_lora(targets, source, scale=1.0, *, fuse=False, ignore=(), dtype=None):
    """Apply a LoRA file (or a dict of its tensors) to `targets` = {"unet": ..., "text_encoder": ...,
    "text_encoder_2": ...} (or one UNet) and return the attached `Lora` (fused when `fuse`).
    Keys of components in `ignore` are skipped with a warning; everything else must map (see module doc).
    `dtype`: of the LoRA's tensors (default: each target's), e.g. float32 to train on a half-precision model."""
    if isinstance(targets, nn.Module):
        targets = {"unet": targets}
    bad = sorted(set(targets) - set(COMPONENTS))
    if bad:
        raise ValueError(f"load_lora: targets {bad} are not among {COMPONENTS}")
    if isinstance(source, dict):
        tensors, metadata, name = source, None, "LoRA state dict"
    else:
        (tensors, metadata), name = read_lora_file(source), str(source)
    groups, ignored = group_keys(tensors, targets, name, ignore)
    if ignored:
        import warnings

        warnings.warn(f"{name}: skipped the LoRA keys of {ignored} (not loaded here: use Pipeline.load_lora for "
                      "the text encoders)", stacklevel=2)
    if not groups:
        raise CheckpointError(f"{name}: no LoRA layer for {sorted(targets)} in it")
    layers, paths = {}, {}
    for (component, path), slot in sorted(groups.items()):
        module = targets[component].get_submodule(path)
        stem = kohya_name(component, path, targets)
        layers[stem] = make_layer(module, slot, component, path, name, metadata, dtype)
        paths[stem] = (component, path)
    lora = Lora(layers, scale, name)
    lora.paths = paths
    return lora.fuse() if fuse else lora.attach()


ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")  # the usual training targets (kohya's default for the UNet)


def new_lora(targets, rank=4, alpha=None, *, include=ATTENTION, seed=0, dtype=torch.float32):
    """A fresh, trainable LoRA on every module of `targets` whose path ends with one of `include`: down random
    (N(0, 1/fan_in)), up zero, so it starts as the identity (the standard initialisation). Attached and returned."""
    if isinstance(targets, nn.Module):
        targets = {"unet": targets}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for component, model in targets.items():
        for path in lora_targets(model):
            if not any(path == leaf or path.endswith("." + leaf) for leaf in include):
                continue
            w = model.get_submodule(path).weight
            stem = kohya_name(component, path, targets)
            fan_in = w[0].numel()
            state[f"{stem}.lora_down.weight"] = torch.randn((rank, *w.shape[1:]), generator=g) / fan_in ** 0.5
            state[f"{stem}.lora_up.weight"] = torch.zeros((w.shape[0], rank) + ((1, 1) if w.ndim == 4 else ()))
            state[f"{stem}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    if not state:
        raise ValueError(f"new_lora: no module of {sorted(targets)} ends with one of {include}")
    return load_lora(targets, state, dtype=dtype)


# model -> the LoRAs load_unet_lora put on it, in the order loaded (the model class knows nothing of them)
_ON = weakref.WeakKeyDictionary()


def unet_loras(unet):
    """The LoRAs load_unet_lora put on `unet`, in the order loaded."""
    return _ON.setdefault(unet, [])


def load_unet_lora(unet, source, scale=1.0, *, fuse=False, dtype=None):
    """Apply the UNet part of a LoRA file (text-encoder keys are skipped with a warning) -> the `Lora`."""
    lora = load_lora({"unet": unet}, source, scale, fuse=fuse, ignore=TEXT_COMPONENTS, dtype=dtype)
    unet_loras(unet).append(lora)
    return lora


def fuse_loras(unet):
    for lora in unet_loras(unet):
        lora.fuse()
    return unet


def unfuse_loras(unet):
    for lora in unet_loras(unet):
        lora.unfuse()
    return unet


def unload_loras(unet):
    """Take every LoRA off: the weights are the loaded ones again, bit for bit."""
    for lora in reversed(unet_loras(unet)):
        lora.remove()
    unet_loras(unet).clear()
    return unet


def parse_lora_arg(text):
    """'FILE[:SCALE]' (the CLI's --lora) -> (path, scale). A trailing ':number' is the scale."""
    head, sep, tail = text.rpartition(":")
    if sep and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail):
        return Path(head), float(tail)
    return Path(text), 1.0
